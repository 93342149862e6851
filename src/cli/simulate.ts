// `shepherd simulate --devices N`: N devices with certificates made on the fly from the Fleet CA
// key, connected to a running Shepherd; they report info and metrics, answer commands and perform
// firmware updates (downloaded and verified, then kept nowhere: they only report the new version).
import path from 'node:path'
import { randomBytes } from 'node:crypto'
import { CommandError, UsageError } from '../errors.js'
import { readFleetCa } from '../certs/pki.js'
import { connectFleet, makeIdentity } from '../device-client/fleet.js'
import { parseCommand, type Output } from './main.js'

export async function simulate (args: string[], output: Output): Promise<void> {
  const { values } = parseCommand(args, {
    devices: { type: 'string', default: '10' },
    url: { type: 'string', default: 'ws://localhost:4000/mqtt' },
    'ca-dir': { type: 'string', default: 'priv/ca' },
    prefix: { type: 'string', default: `sim-${randomBytes(2).toString('hex')}` },
    duration: { type: 'string' },
    'metrics-interval': { type: 'string', default: '10' }
  })
  const count = Number(values.devices)
  if (!/^\d+$/.test(values.devices) || count < 1 || count > 100_000) throw new UsageError('--devices must be a number from 1 to 100000')
  // Node's timers hold at most 2^31 - 1 ms (24.8 days); beyond that they fire after 1 ms
  const MAX_SECONDS = Math.floor((2 ** 31 - 1) / 1000)
  const duration = values.duration === undefined ? undefined : Number(values.duration)
  if (duration !== undefined && !(duration > 0 && duration <= MAX_SECONDS)) throw new UsageError(`--duration must be a positive number of seconds, at most ${MAX_SECONDS}`)
  const metricsInterval = Number(values['metrics-interval'])
  if (!(metricsInterval > 0 && metricsInterval <= MAX_SECONDS)) throw new UsageError(`--metrics-interval must be a positive number of seconds, at most ${MAX_SECONDS}`)
  if (!/^(wss?|mqtts?):\/\//.test(values.url)) throw new UsageError('--url must be a ws://, wss://, mqtt:// or mqtts:// URL')

  const caDir = path.resolve(values['ca-dir'])
  const ca = await readFleetCa(caDir).catch(() => { throw new CommandError(`no Fleet CA key in ${caDir}; simulated devices need it to get certificates (pass --ca-dir)`) })
  output.err(`making ${count} device certificates...`)
  const identities = await Promise.all(Array.from({ length: count }, (_, i) => makeIdentity(ca, `${values.prefix}-${i + 1}`)))

  let lastLine = 0
  const result = await connectFleet(identities, {
    url: values.url,
    reconnectPeriodMs: 2000,
    info: { firmware_version: '1.0.0', firmware_target: 'sim', simulated: true },
    onProgress: ({ connected, refused, total }) => {
      if (Date.now() - lastLine < 500 && connected + refused < total) return
      lastLine = Date.now()
      output.err(`connecting: ${connected} connected, ${refused} refused, ${total} in all`)
    }
  })
  const rate = result.devices.length / (result.elapsedMs / 1000)
  output.out(`connected ${result.devices.length}, refused ${result.refusals.length}, ${rate.toFixed(0)} devices/s`)
  for (const { serial, error } of result.refusals.slice(0, 5)) output.err(`  ${serial}: ${error.message}`)
  if (result.devices.length === 0) throw new CommandError(`no device could connect to ${values.url}`)

  const ticker = setInterval(() => {
    for (const device of result.devices) {
      void device.publishMetrics([{ name: 'cpu_percent', value: Math.round(Math.random() * 1000) / 10, unit: '%' }], 0).catch(() => {})
    }
  }, metricsInterval * 1000)
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve)
    process.once('SIGTERM', resolve)
    if (duration !== undefined) setTimeout(resolve, duration * 1000).unref()
  })
  clearInterval(ticker)
  await Promise.all(result.devices.map(device => device.close()))
  output.out(`disconnected ${result.devices.length} devices`)
}
