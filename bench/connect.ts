// Connect benchmark (prints figures; not a test):
//   node --import tsx bench/connect.ts [--devices N] [--transport ws|tcp] [--database pglite|postgres]
//                                      [--concurrency C] [--warmup W] [--timeout SECONDS] [--profile-dir DIR]
// N devices open a session each (CONNECT with signed credential and will, SUBSCRIBE, retained online
// status) against Shepherd and then against a bare Aedes baseline on the same transport. Each broker
// runs in its own child process (bench/lib/broker-process.ts), which reports its CPU time and RSS;
// this process is the load generator. Prints sessions/s, CONNACK p50/p99, broker CPU µs per
// session and RSS per 1,000 devices for both, and Shepherd/baseline for sessions/s.
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import type { DeviceIdentity } from '../src/device-client/device-client.js'
import type { Transport } from './lib/brokers.js'
import { forkBroker, type BrokerKind, type BrokerProcess } from './lib/broker-handle.js'
import { baselineDevice, connectAll, disconnectAll, shepherdDevice } from './lib/load.js'
import {
  createThrowawayDatabase, machineDescription, printMachineState, type ThrowawayDatabase
} from './lib/environment.js'
import { makeBenchFleet } from './lib/fleet.js'
import { mib, percentile } from './lib/figures.js'
import { guardRun } from './lib/run-guard.js'
import { optionChecks, type OptionChecks } from './lib/options.js'

const MAX_DEVICES = 20_000

interface Options {
  devices: number
  transport: Transport
  database: 'pglite' | 'postgres'
  concurrency: number
  /** Devices connected and dropped before the measured phase, to warm up both processes' JIT. */
  warmup: number
  timeoutSeconds: number
  profileDir: string | undefined
}

interface Figures {
  kind: BrokerKind
  accepted: number
  refused: number
  sessionFailures: number
  firstError: string | undefined
  elapsedMs: number
  latenciesMs: number[]
  brokerCpuMicros: number
  rssBeforeBytes: number | null
  rssAfterBytes: number | null
  /** Growth of V8's heap over the measured phase. */
  heapGrowthBytes: number
  loadCpuMicros: number
  /** Disconnecting every device, then closing the broker (not part of the figures). */
  teardownMs: number
}

const checks: OptionChecks = optionChecks(`node --import tsx bench/connect.ts [--devices 1..${MAX_DEVICES}] [--transport ws|tcp] ` +
    '[--database pglite|postgres] [--concurrency N] [--warmup N] [--timeout SECONDS] [--profile-dir DIR]')

function parseOptions (): Options {
  const { values } = parseArgs({
    options: {
      devices: { type: 'string', default: '2000' },
      transport: { type: 'string', default: 'ws' },
      database: { type: 'string', default: 'pglite' },
      concurrency: { type: 'string', default: '100' },
      warmup: { type: 'string', default: '100' },
      timeout: { type: 'string', default: '600' },
      'profile-dir': { type: 'string' }
    }
  })
  if (values.transport !== 'ws' && values.transport !== 'tcp') checks.usage('--transport must be ws or tcp')
  if (values.database !== 'pglite' && values.database !== 'postgres') checks.usage('--database must be pglite or postgres')
  return {
    devices: checks.integer('devices', values.devices, MAX_DEVICES),
    transport: values.transport,
    database: values.database,
    concurrency: checks.integer('concurrency', values.concurrency, MAX_DEVICES),
    warmup: checks.integer('warmup', values.warmup, 1000, 0),
    timeoutSeconds: checks.integer('timeout', values.timeout, 86_400),
    profileDir: values['profile-dir'] === undefined ? undefined : path.resolve(values['profile-dir'])
  }
}

const options = parseOptions()
const live = new Set<BrokerProcess>()
let database: ThrowawayDatabase | undefined
let workDir: string | undefined
/** Filled as each broker's run completes: an aborted run still reports those. */
const results: Figures[] = []

async function cleanUp (): Promise<void> {
  for (const broker of live) broker.kill()
  await database?.drop().catch((error: unknown) => { console.error(`could not drop the benchmark database: ${(error as Error).message}`) })
  if (workDir !== undefined) await rm(workDir, { recursive: true, force: true })
}

const guard = guardRun({
  timeoutSeconds: options.timeoutSeconds,
  reportPartial: () => { if (results.length > 0) report(results); return results.length > 0 },
  cleanUp
})

interface Fleet { caPath: string, devices: DeviceIdentity[], warmup: DeviceIdentity[] }

async function makeFleet (dir: string): Promise<Fleet> {
  guard.phase = `making ${options.devices + options.warmup} device identities`
  const { caPath, groups: [devices, warmup], elapsedMs } = await makeBenchFleet(dir, [
    { prefix: 'bench', count: options.devices }, { prefix: 'warmup', count: options.warmup }
  ])
  console.log(`(made ${options.devices + options.warmup} device identities in ${(elapsedMs / 1000).toFixed(1)} s, not timed)`)
  return { caPath, devices: devices!, warmup: warmup! }
}

async function measure (kind: BrokerKind, fleet: Fleet): Promise<Figures> {
  guard.phase = `starting the ${kind} broker`
  const broker = await forkBroker({
    kind, transport: options.transport, dataDir: path.join(workDir!, kind), fleetCaPath: fleet.caPath, databaseUrl: database?.url, profileDir: options.profileDir
  })
  live.add(broker)
  const connector = kind === 'shepherd' ? shepherdDevice(broker.url) : baselineDevice(broker.url)
  if (fleet.warmup.length > 0) {
    guard.phase = `warming up ${kind} with ${fleet.warmup.length} devices`
    await disconnectAll((await connectAll(fleet.warmup, options.concurrency, connector)).sessions)
  }
  const before = await broker.sample('before')
  const loadCpu = process.cpuUsage()
  const started = performance.now()
  const total = fleet.devices.length
  const progress = (done: number): void => { guard.phase = `connecting devices to ${kind} (${done} of ${total} CONNECTs answered)` }
  progress(0)
  const load = await connectAll(fleet.devices, options.concurrency, connector, progress)
  guard.phase = `waiting for ${kind} to publish ${load.sessions.length} retained statuses`
  await broker.sessions(load.sessions.length)
  const elapsedMs = performance.now() - started
  const loadCpuUsed = process.cpuUsage(loadCpu)
  const after = await broker.sample('after')
  guard.phase = `closing ${kind}`
  const closing = performance.now()
  await disconnectAll(load.sessions)
  await broker.close()
  live.delete(broker)
  return {
    kind,
    accepted: load.sessions.length,
    refused: load.refusals.length,
    sessionFailures: load.sessionFailures.length,
    firstError: (load.refusals[0] ?? load.sessionFailures[0])?.message,
    elapsedMs,
    latenciesMs: load.latenciesMs.sort((a, b) => a - b),
    brokerCpuMicros: after.cpuMicros - before.cpuMicros,
    rssBeforeBytes: before.rssBytes,
    rssAfterBytes: after.rssBytes,
    heapGrowthBytes: after.heapBytes - before.heapBytes,
    loadCpuMicros: loadCpuUsed.user + loadCpuUsed.system,
    teardownMs: performance.now() - closing
  }
}

function report (results: readonly Figures[]): void {
  const rows: Array<[string, (f: Figures) => string]> = [
    ['device sessions/s', f => (f.accepted / (f.elapsedMs / 1000)).toFixed(0)],
    ['CONNACK p50 (ms)', f => percentile(f.latenciesMs, 50).toFixed(1)],
    ['CONNACK p99 (ms)', f => percentile(f.latenciesMs, 99).toFixed(1)],
    ['broker CPU µs/session', f => (f.brokerCpuMicros / f.accepted).toFixed(0)],
    ['broker CPU busy (% of one core)', f => (f.brokerCpuMicros / 10 / f.elapsedMs).toFixed(0)],
    ['RSS MiB per 1,000 devices', f => f.rssAfterBytes === null || f.rssBeforeBytes === null ? 'n/a'
      : ((f.rssAfterBytes - f.rssBeforeBytes) / 2 ** 20 / (f.accepted / 1000)).toFixed(1)],
    ['  of it V8 heap / native, KiB per device', f => f.rssAfterBytes === null || f.rssBeforeBytes === null ? 'n/a'
      : `${(f.heapGrowthBytes / 1024 / f.accepted).toFixed(1)} / ${((f.rssAfterBytes - f.rssBeforeBytes - f.heapGrowthBytes) / 1024 / f.accepted).toFixed(1)}`],
    ['broker RSS MiB before → after', f => `${mib(f.rssBeforeBytes)} → ${mib(f.rssAfterBytes)}`],
    ['load generator CPU µs/session', f => (f.loadCpuMicros / f.accepted).toFixed(0)],
    ['load generator busy (% of one core)', f => (f.loadCpuMicros / 10 / f.elapsedMs).toFixed(0)],
    ['sessions complete / refused / failed', f => `${f.accepted - f.sessionFailures}/${f.refused}/${f.sessionFailures}`],
    ['wall time (s)', f => (f.elapsedMs / 1000).toFixed(2)],
    ['teardown, not measured (s)', f => (f.teardownMs / 1000).toFixed(2)]
  ]
  const width = Math.max(...rows.map(([label]) => label.length)) + 2
  console.log(`\n${''.padEnd(width)}${results.map(f => f.kind.padStart(12)).join('')}`)
  for (const [label, cell] of rows) console.log(`${label.padEnd(width)}${results.map(f => cell(f).padStart(12)).join('')}`)
  for (const f of results) if (f.firstError !== undefined) console.log(`${f.kind}: first error: ${f.firstError}`)
  const [shepherd, baseline] = results
  if (shepherd !== undefined && baseline !== undefined) {
    const rate = (f: Figures): number => f.accepted / f.elapsedMs
    console.log(`\nShepherd/baseline sessions/s: ${(rate(shepherd) / rate(baseline)).toFixed(2)}`)
  }
}

console.log('Shepherd connect benchmark')
console.log(`workload: ${options.devices} devices over ${options.transport === 'ws' ? 'MQTT over WebSocket' : 'MQTT over TCP'}, ` +
  `database ${options.database} (Shepherd only), ${options.concurrency} CONNECTs in flight, ` +
  `${options.warmup} warm-up devices per broker (not measured), timeout ${options.timeoutSeconds} s`)
console.log(`machine: ${machineDescription()}`)
console.log('session: CONNECT (client id = username = serial, signed credential, will on its status topic), ' +
  'SUBSCRIBE to its commands/firmware/errors topics (QoS 1), and a retained online status on ' +
  'shepherd/devices/<serial>/status — published by Shepherd itself, by the device (QoS 1) on the baseline')
console.log('baseline: bare Aedes (stock in-memory persistence, no hooks) on the same transport; mqtt.js clients sending the same CONNECT. ' +
  'Stock aedes-persistence matches every retained message against each SUBSCRIBE, so its cost per session grows with N ' +
  '(Shepherd indexes exact topics: src/mqtt/retained-index.ts)')
console.log('each broker runs alone in a child process: broker CPU and RSS are that process\'s own; this process (mqtt.js clients) is the load generator')
console.log('a session is complete once its CONNACK and SUBACK (baseline: also PUBACK) reached the device and the broker published its retained status; ' +
  'sessions/s = sessions / time from the first CONNECT to the last completion. CONNACK latency: from signing the credential to CONNACK, ' +
  'connection set-up and queueing behind the other CONNECTs in flight included')
printMachineState(options.devices, 'CPU µs/session')

await guard.run(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'shepherd-bench-'))
  const fleet = await makeFleet(workDir)
  if (options.database === 'postgres') {
    guard.phase = 'creating the PostgreSQL database'
    database = await createThrowawayDatabase()
  }
  for (const kind of ['shepherd', 'baseline'] as const) results.push(await measure(kind, fleet))
  report(results)
})
