// The reference device client against a real server: it answers ping, identify and reboot on its
// commands topic (reboot reconnects with a fresh timestamp), and `shepherd simulate` runs a fleet
// that answers commands issued over REST.
import t from 'tap'
import { connectDevice, type CommandMessage } from '../../src/device-client/device-client.js'
import { startTestServer, eventually } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { runShepherd } from '../helpers/cli.js'
import { writeFleetCa, createFleetCa } from '../../src/certs/pki.js'
import { createTestPki } from '../helpers/pki.js'
import path from 'node:path'

t.test('the device answers commands and reboots', async (t) => {
  const ts = await startTestServer(t)
  const serial = uniqueSerial()
  const device = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(serial), rebootDelayMs: 200, info: { firmware_version: '2.0.0', firmware_target: 'rpi4' } })
  t.teardown(() => device.close())
  const replies: Array<Record<string, unknown>> = []
  await new Promise<void>(resolve => ts.server.broker.aedes.subscribe(`shepherd/devices/${serial}/replies`, (packet, done) => {
    replies.push(JSON.parse(packet.payload.toString()) as Record<string, unknown>)
    done()
  }, resolve))
  await eventually(async () => (await ts.server.db.knex('devices').where({ serial }).first())?.firmware_version === '2.0.0', 5000, 'info recorded')

  const send = async (command: CommandMessage): Promise<void> => {
    await ts.server.broker.publish(`shepherd/devices/${serial}/commands`, JSON.stringify(command), { qos: 1, retain: false })
  }
  await send({ id: 'c1', command: 'ping', payload: { echo: 'hello' } })
  t.same(await eventually(() => replies.find(reply => reply.id === 'c1')), { id: 'c1', status: 'ok', result: { echo: 'hello' } })
  await send({ id: 'c2', command: 'identify' })
  t.match(await eventually(() => replies.find(reply => reply.id === 'c2')), { id: 'c2', status: 'ok' })
  await send({ id: 'c3', command: 'self-destruct' })
  t.match(await eventually(() => replies.find(reply => reply.id === 'c3')), { id: 'c3', status: 'error', error: /unsupported command/ })

  const connectedBefore = (await ts.server.db.knex('devices').where({ serial }).first()).connected_at as Date
  await send({ id: 'c4', command: 'reboot' })
  t.match(await eventually(() => replies.find(reply => reply.id === 'c4')), { id: 'c4', status: 'ok' })
  const row = await eventually(async () => {
    const current = await ts.server.db.knex('devices').where({ serial }).first()
    return current.status === 'online' && current.connected_at.getTime() > connectedBefore.getTime() ? current : undefined
  }, 10_000, 'the device back online after its reboot')
  t.equal(row.status, 'online', 'reconnected with a new credential after the reboot')
  t.equal(ts.logs.filter(line => line.reason === 'replayed').length, 0, 'the reconnect did not replay its timestamp')
})

t.test('shepherd simulate connects a fleet and reports it', async (t) => {
  const pki = await createTestPki()
  const ts = await startTestServer(t, { pki })
  const caDir = path.join(ts.dataDir, 'ca')
  await writeFleetCa(caDir, { ...pki.ca, keyPem: pki.caKeyPem })
  const running = runShepherd(['simulate', '--devices', '5', '--url', ts.wsUrl, '--ca-dir', caDir, '--duration', '6', '--prefix', 'simtest'])
  // the whole command loop without hardware: REST → simulated device → reply → ok
  await eventually(async () => (await ts.api('GET', '/api/devices?status=online&q=simtest')).body.items.length === 5, 10_000, 'five simulated devices online')
  for (const [serial, command, result] of [['simtest-1', 'ping', { echo: 'sim' }], ['simtest-2', 'identify', { identified: true }], ['simtest-3', 'reboot', { rebooting: true }]] as const) {
    const issued = await ts.api('POST', `/api/devices/${serial}/commands`, { body: { command, ...(command === 'ping' ? { payload: { echo: 'sim' } } : {}) } })
    const done = await eventually(async () => { const r = await ts.api('GET', `/api/commands/${issued.body.id}`); return r.body.state === 'ok' && r.body }, 5000, `${command} answered`)
    t.same(done.result, result, `${serial} answered ${command}`)
  }
  const result = await running
  t.equal(result.code, 0, result.stderr)
  t.match(result.stdout, /connected 5, refused 0, \d+ devices\/s/)
  t.match(result.stderr, /connecting: 5 connected, 0 refused, 5 in all/)
  t.match(result.stdout, /disconnected 5 devices/)
  const rows = await ts.server.db.knex('devices').where('serial', 'like', 'simtest-%').orderBy('serial')
  t.equal(rows.length, 5, 'five simulated devices registered')
  t.ok(rows.every((row: { firmware_target: string }) => row.firmware_target === 'sim'), 'they reported info')

  const refused = await runShepherd(['simulate', '--devices', '2', '--url', ts.wsUrl, '--ca-dir', await strangerCaDir(ts.dataDir), '--duration', '1'])
  t.equal(refused.code, 1, 'no device could connect')
  t.match(refused.stdout, /connected 0, refused 2/)
  t.equal((await runShepherd(['simulate', '--devices', 'many'])).code, 2)
  for (const option of ['--duration', '--metrics-interval']) {
    const tooLong = await runShepherd(['simulate', '--devices', '1', option, '2500000'])
    t.equal(tooLong.code, 2, `${option} beyond what a timer holds is bad usage`)
    t.match(tooLong.stderr, /at most 2147483/)
  }
})

async function strangerCaDir (dataDir: string): Promise<string> {
  const dir = path.join(dataDir, 'stranger-ca')
  await writeFleetCa(dir, await createFleetCa())
  return dir
}
