// Metrics ingestion benchmark (prints figures; not a test):
//   node --import tsx bench/ingest.ts [--devices K] [--transport ws|tcp] [--duration SECONDS] [--inflight N]
//                                     [--points P] [--qos 0|1] [--concurrency C] [--drain-timeout SECONDS] [--timeout SECONDS]
//                                     [--profile-dir DIR]
// K devices publish metrics messages of P points (contract §3) at full speed for SECONDS, each with
// at most N unacknowledged messages, into Shepherd (METRICS_HANDLERS=postgres on a fresh PostgreSQL
// database) and then, in the same run, into a bare Aedes whose one in-process subscriber to
// shepherd/devices/+/metrics does nothing (the broker's ceiling); over TCP, then over WebSocket,
// unless --transport names one. Each broker runs in its own child process (bench/lib/broker-process.ts);
// this process is the load generator and watches what is stored: Shepherd's rows in metric_points,
// the baseline's messages received by its subscriber. Prints points/s and messages/s stored,
// Shepherd/baseline, publish→stored and publish→PUBACK p50/p99, broker CPU and RSS, and the targets.
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import { deviceTopic } from '../src/topics.js'
import type { DeviceIdentity } from '../src/device-client/device-client.js'
import type { Transport } from './lib/brokers.js'
import { forkBroker, type BrokerKind, type BrokerProcess } from './lib/broker-handle.js'
import { baselineDevice, closeOf, connectAll, disconnectAll, shepherdDevice, type Session } from './lib/load.js'
import {
  createThrowawayDatabase, machineDescription, printMachineState, startPostgresCpu, type ThrowawayDatabase
} from './lib/environment.js'
import { makeBenchFleet } from './lib/fleet.js'
import { startStoredWatcher, type Stored, type StoredWatcher } from './lib/stored-watcher.js'
import { mib, thousands, percentile } from './lib/figures.js'
import { guardRun } from './lib/run-guard.js'
import { optionChecks, type OptionChecks } from './lib/options.js'

const MAX_DEVICES = 20_000
const POLL_MS = 100
/** One point per message carries its publish time (Date.now()) as its value. */
const LATENCY_METRIC = 'bench_latency'
const TARGET = { pointsPerSecond: 50_000, p99Ms: 1000, ratio: 0.7 }

interface Options {
  devices: number
  transports: Transport[]
  durationSeconds: number
  inflight: number
  points: number
  qos: 0 | 1
  concurrency: number
  drainTimeoutSeconds: number
  timeoutSeconds: number
  profileDir: string | undefined
}

interface Figures {
  kind: BrokerKind
  transport: Transport
  connected: number
  refused: number
  /** Acknowledged (QoS 1) or written to the socket (QoS 0). */
  messages: number
  failedPublishes: number
  firstError: string | undefined
  /** Messages devices received on their `errors` topic (points Shepherd dropped). */
  errorReports: number
  firstReport: string | undefined
  storedPoints: number
  expectedPoints: number
  /** First publish → last publish settled. */
  publishingMs: number
  /** First publish → last point stored (Shepherd: the poll that first saw it). */
  storedMs: number
  pubackMs: number[]
  /** Shepherd only. */
  storedLatencyMs: number[] | undefined
  brokerCpuMicros: number
  rssBeforeBytes: number | null
  rssAfterBytes: number | null
  peakRssBytes: number | null
  loadCpuMicros: number
  postgresCpuMicros: number
}

const checks: OptionChecks = optionChecks(`node --import tsx bench/ingest.ts [--devices 1..${MAX_DEVICES}] [--transport ws|tcp] [--duration SECONDS] ` +
    '[--inflight N] [--points P] [--qos 0|1] [--concurrency C] [--drain-timeout SECONDS] [--timeout SECONDS] [--profile-dir DIR]')

function parseOptions (): Options {
  const { values } = parseArgs({
    options: {
      devices: { type: 'string', default: '2000' },
      transport: { type: 'string' },
      duration: { type: 'string', default: '20' },
      inflight: { type: 'string', default: '1' },
      points: { type: 'string', default: '10' },
      qos: { type: 'string', default: '1' },
      concurrency: { type: 'string', default: '100' },
      'drain-timeout': { type: 'string', default: '60' },
      timeout: { type: 'string', default: '900' },
      'profile-dir': { type: 'string' }
    }
  })
  if (values.transport !== undefined && values.transport !== 'ws' && values.transport !== 'tcp') checks.usage('--transport must be ws or tcp')
  if (values.qos !== '0' && values.qos !== '1') checks.usage('--qos must be 0 or 1')
  return {
    devices: checks.integer('devices', values.devices, MAX_DEVICES),
    transports: values.transport === undefined ? ['tcp', 'ws'] : [values.transport],
    durationSeconds: checks.integer('duration', values.duration, 3600),
    inflight: checks.integer('inflight', values.inflight, 100),
    points: checks.integer('points', values.points, 1000),
    qos: values.qos === '0' ? 0 : 1,
    concurrency: checks.integer('concurrency', values.concurrency, MAX_DEVICES),
    drainTimeoutSeconds: checks.integer('drain-timeout', values['drain-timeout'], 3600),
    timeoutSeconds: checks.integer('timeout', values.timeout, 86_400),
    profileDir: values['profile-dir'] === undefined ? undefined : path.resolve(values['profile-dir'])
  }
}

const options = parseOptions()
const live = new Set<BrokerProcess>()
let database: ThrowawayDatabase | undefined
let databaseWatcher: StoredWatcher | undefined
let workDir: string | undefined
/** Filled as each broker's run completes: an aborted run still reports those. */
const results: Figures[] = []

async function dropDatabase (): Promise<void> {
  const [watcher, db] = [databaseWatcher, database]
  databaseWatcher = undefined
  database = undefined
  await watcher?.stop().catch(() => {})
  await db?.drop().catch((error: unknown) => { console.error(`could not drop the benchmark database: ${(error as Error).message}`) })
}

async function cleanUp (): Promise<void> {
  for (const broker of live) broker.kill()
  await dropDatabase()
  if (workDir !== undefined) await rm(workDir, { recursive: true, force: true })
}

const guard = guardRun({
  timeoutSeconds: options.timeoutSeconds,
  reportPartial: () => { if (results.length > 0) report(results); return results.length > 0 },
  cleanUp
})

/** The payload of one message: contract §3, every point recorded at the publish time (ms). */
function payload (sentAt: number): string {
  const recordedAt = new Date(sentAt).toISOString()
  const metrics = [{ name: LATENCY_METRIC, value: sentAt, unit: 'ms', recorded_at: recordedAt }]
  for (let i = 1; i < options.points; i++) metrics.push({ name: `bench_${i}`, value: i * 1.5, unit: '%', recorded_at: recordedAt })
  return JSON.stringify({ metrics })
}

interface Publishing { startedAtMs: number, messages: number, failed: number, firstError: string | undefined, pubackMs: number[], elapsedMs: number }

/** Every device publishes at full speed for --duration, with --inflight messages at most unsettled each. */
async function publishAll (sessions: readonly Session[]): Promise<Publishing> {
  const result: Publishing = { startedAtMs: Date.now(), messages: 0, failed: 0, firstError: undefined, pubackMs: [], elapsedMs: 0 }
  const started = performance.now()
  const until = started + options.durationSeconds * 1000
  await Promise.all(sessions.flatMap(({ mqtt: client }) => {
    const topic = deviceTopic(client.options.clientId!, 'metrics')
    const closed = closeOf(client, 'PUBACK')
    return Array.from({ length: options.inflight }, async () => {
      while (performance.now() < until) {
        const begun = performance.now()
        try {
          await Promise.race([client.publishAsync(topic, payload(Date.now()), { qos: options.qos }), closed])
        } catch (error) {
          result.failed++
          result.firstError ??= (error as Error).message
          return
        }
        result.messages++
        if (options.qos === 1) result.pubackMs.push(performance.now() - begun)
      }
    })
  }))
  result.elapsedMs = performance.now() - started
  return result
}

async function measure (kind: BrokerKind, transport: Transport, identities: readonly DeviceIdentity[], caPath: string): Promise<Figures> {
  if (kind === 'shepherd') {
    guard.phase = 'creating the PostgreSQL database'
    database = await createThrowawayDatabase()
  }
  guard.phase = `starting the ${kind} broker (${transport})`
  const broker = await forkBroker({
    kind,
    transport,
    dataDir: path.join(workDir!, `${kind}-${transport}`),
    fleetCaPath: caPath,
    databaseUrl: database?.url,
    env: { METRICS_HANDLERS: 'postgres', LOG_LEVEL: 'warn' },
    metricsSubscriber: kind === 'baseline',
    profileDir: options.profileDir
  })
  live.add(broker)
  guard.phase = `connecting ${identities.length} devices to ${kind}`
  const connected = await connectAll(identities, options.concurrency, kind === 'shepherd' ? shepherdDevice(broker.url) : baselineDevice(broker.url))
  await broker.sessions(connected.sessions.length)
  let errorReports = 0
  let firstReport: string | undefined
  for (const { mqtt: client } of connected.sessions) {
    client.on('message', (topic, message) => {
      if (!topic.endsWith('/errors')) return
      errorReports++
      firstReport ??= message.toString()
    })
  }
  let watcher: { poll (): Promise<Stored>, latenciesMs?: number[] }
  if (kind === 'shepherd') {
    const stored = databaseWatcher = await startStoredWatcher({ url: database!.url, latencyMetric: LATENCY_METRIC, pollMs: POLL_MS })
    watcher = { poll: async () => stored.current(), latenciesMs: stored.latenciesMs }
  } else {
    watcher = { poll: async () => { const { messages, lastAtMs } = await broker.received(); return { points: messages * options.points, lastAtMs } } }
  }

  const before = await broker.sample('before')
  const loadCpu = process.cpuUsage()
  const postgresCpu = startPostgresCpu()
  guard.phase = `publishing to ${kind} over ${transport} for ${options.durationSeconds} s`
  let publishing: Publishing | undefined
  const published = publishAll(connected.sessions).then(result => { publishing = result })
  const drainDeadline = (): number => publishing!.startedAtMs + publishing!.elapsedMs + options.drainTimeoutSeconds * 1000
  let stored: Stored
  for (;;) {
    stored = await watcher.poll()
    if (publishing !== undefined) {
      const expected = publishing.messages * options.points
      guard.phase = `waiting for ${kind} to store ${thousands(expected)} points (${thousands(stored.points)} so far)`
      if (stored.points >= expected || Date.now() > drainDeadline()) break
    }
    await sleep(POLL_MS)
  }
  await published
  const loadCpuUsed = process.cpuUsage(loadCpu)
  const postgresCpuMicros = postgresCpu()
  const after = await broker.sample('after')

  guard.phase = `closing ${kind}`
  await disconnectAll(connected.sessions)
  await broker.close()
  live.delete(broker)
  await dropDatabase()
  const { startedAtMs, messages, failed, firstError, pubackMs, elapsedMs } = publishing!
  return {
    kind,
    transport,
    connected: connected.sessions.length,
    refused: connected.refusals.length,
    messages,
    failedPublishes: failed,
    firstError: firstError ?? (connected.refusals[0] ?? connected.sessionFailures[0])?.message,
    errorReports,
    firstReport,
    storedPoints: stored.points,
    expectedPoints: messages * options.points,
    publishingMs: elapsedMs,
    storedMs: stored.lastAtMs === null ? NaN : stored.lastAtMs - startedAtMs,
    pubackMs: pubackMs.sort((a, b) => a - b),
    storedLatencyMs: watcher.latenciesMs === undefined ? undefined : [...watcher.latenciesMs].sort((a, b) => a - b),
    brokerCpuMicros: after.cpuMicros - before.cpuMicros,
    rssBeforeBytes: before.rssBytes,
    rssAfterBytes: after.rssBytes,
    peakRssBytes: after.peakRssBytes,
    loadCpuMicros: loadCpuUsed.user + loadCpuUsed.system,
    postgresCpuMicros
  }
}

const pointsPerSecond = (f: Figures): number => f.storedPoints / (f.storedMs / 1000)
const allCpuMicros = (f: Figures): number => f.brokerCpuMicros + f.postgresCpuMicros + f.loadCpuMicros
const p50p99 = (sorted: readonly number[] | undefined): string =>
  sorted === undefined || sorted.length === 0 ? 'n/a' : `${percentile(sorted, 50).toFixed(0)} / ${percentile(sorted, 99).toFixed(0)}`

function report (all: readonly Figures[]): void {
  const rows: Array<[string, (f: Figures) => string]> = [
    ['devices connected / refused', f => `${f.connected} / ${f.refused}`],
    ['messages published', f => thousands(f.messages)],
    ['messages per device (mean)', f => (f.messages / f.connected).toFixed(1)],
    ['failed publishes', f => String(f.failedPublishes)],
    ['points stored / published', f => `${thousands(f.storedPoints)} / ${thousands(f.expectedPoints)}`],
    ['points/s stored', f => thousands(pointsPerSecond(f))],
    ['messages/s stored', f => thousands(pointsPerSecond(f) / options.points)],
    ['publish→stored p50 / p99 (ms)', f => p50p99(f.storedLatencyMs)],
    ['publish→PUBACK p50 / p99 (ms)', f => p50p99(f.pubackMs)],
    ['publishing / to last stored (s)', f => `${(f.publishingMs / 1000).toFixed(2)} / ${(f.storedMs / 1000).toFixed(2)}`],
    ['broker CPU µs/point', f => (f.brokerCpuMicros / f.storedPoints).toFixed(1)],
    ['broker CPU busy (% of one core)', f => (f.brokerCpuMicros / 10 / f.storedMs).toFixed(0)],
    ['broker RSS MiB before → after', f => `${mib(f.rssBeforeBytes)} → ${mib(f.rssAfterBytes)}`],
    ['broker peak RSS MiB (VmHWM)', f => mib(f.peakRssBytes)],
    ['load generator busy (% of core)', f => (f.loadCpuMicros / 10 / f.storedMs).toFixed(0)],
    ['PostgreSQL CPU µs/point', f => (f.postgresCpuMicros / f.storedPoints).toFixed(1)],
    ['PostgreSQL busy (% of one core)', f => (f.postgresCpuMicros / 10 / f.storedMs).toFixed(0)],
    ['all CPU µs/point (broker + PostgreSQL + load)', f => (allCpuMicros(f) / f.storedPoints).toFixed(1)],
    ['errors-topic reports', f => String(f.errorReports)]
  ]
  const width = Math.max(...rows.map(([label]) => label.length)) + 2
  for (const transport of ['tcp', 'ws'] as const) {
    const figures = all.filter(f => f.transport === transport)
    if (figures.length === 0) continue
    console.log(`\nover ${transport === 'ws' ? 'WebSocket' : 'TCP'}`)
    console.log(`${''.padEnd(width)}${figures.map(f => f.kind.padStart(24)).join('')}`)
    for (const [label, cell] of rows) console.log(`${label.padEnd(width)}${figures.map(f => cell(f).padStart(24)).join('')}`)
    for (const f of figures) {
      if (f.firstError !== undefined) console.log(`${f.kind}: first error: ${f.firstError}`)
      if (f.firstReport !== undefined) console.log(`${f.kind}: first errors-topic report: ${f.firstReport}`)
      if (f.storedPoints < f.expectedPoints) console.log(`${f.kind}: INCOMPLETE: not every published point was stored within --drain-timeout ${options.drainTimeoutSeconds} s`)
    }
    const shepherd = figures.find(f => f.kind === 'shepherd')
    const baseline = figures.find(f => f.kind === 'baseline')
    if (shepherd === undefined) continue
    const verdict = (met: boolean): string => met ? 'met' : 'MISSED'
    const rate = pointsPerSecond(shepherd)
    const p99 = percentile(shepherd.storedLatencyMs ?? [], 99)
    const ratio = baseline === undefined ? NaN : rate / pointsPerSecond(baseline)
    console.log(`Shepherd/baseline points/s: ${ratio.toFixed(2)}`)
    if (baseline !== undefined) {
      // Broker, database and load generator share this machine's cores: once those are busy, the
      // ratio cannot exceed the ratio of the CPU each run spends per point, whatever the broker does.
      const cpuBound = (allCpuMicros(baseline) / baseline.storedPoints) / (allCpuMicros(shepherd) / shepherd.storedPoints)
      console.log(`Shepherd/baseline CPU per point, all processes: ${(1 / cpuBound).toFixed(2)}× ` +
        `(on cores they share, a ratio of at most ${cpuBound.toFixed(2)})`)
    }
    console.log(`targets: ${thousands(rate)} points/s stored (≥ ${thousands(TARGET.pointsPerSecond)}: ${verdict(rate >= TARGET.pointsPerSecond)}), ` +
      `p99 publish→stored ${p99.toFixed(0)} ms (< ${TARGET.p99Ms}: ${verdict(p99 < TARGET.p99Ms)}), ` +
      `ratio ${ratio.toFixed(2)} (≥ ${TARGET.ratio}: ${verdict(ratio >= TARGET.ratio)})`)
  }
}

console.log('Shepherd metrics ingestion benchmark')
console.log(`workload: ${options.devices} devices, each publishing for ${options.durationSeconds} s at full speed with at most ` +
  `${options.inflight} QoS ${options.qos} message(s) unsettled, ${options.points} points per message ` +
  `(shepherd/devices/<serial>/metrics, contract §3); transports: ${options.transports.join(', then ')}; ` +
  `drain timeout ${options.drainTimeoutSeconds} s, timeout ${options.timeoutSeconds} s`)
console.log(`machine: ${machineDescription()}`)
console.log('Shepherd: METRICS_HANDLERS=postgres on a fresh PostgreSQL database (127.0.0.1:5432) per transport; stored = rows in metric_points, ' +
  `polled every ${POLL_MS} ms from a worker thread (the load generator's busy event loop would delay the polls)`)
console.log('baseline: bare Aedes (stock in-memory persistence, no hooks) on the same transport, with one in-process subscriber to ' +
  'shepherd/devices/+/metrics that only counts; stored = messages it received × points per message')
console.log('each broker runs alone in a child process: broker CPU and RSS are that process\'s own; this process (mqtt.js clients) is the load generator; ' +
  'PostgreSQL CPU is that of every postgres process on this machine (the benchmark\'s own polling included) while publishing and storing')
console.log('points/s stored = points / time from the first publish to the last point stored. publish→stored: one point per message ' +
  `(${LATENCY_METRIC}) carries its publish time; its latency is taken at the start of the first poll that sees its row, so it is an upper bound ` +
  `with a resolution of about ${POLL_MS} ms (Shepherd only). publish→PUBACK: Shepherd acknowledges once the points are validated and queued`)
console.log(`target: ≥ ${thousands(TARGET.pointsPerSecond)} points/s stored end to end, p99 publish→stored < ${TARGET.p99Ms / 1000} s, ` +
  `Shepherd/baseline points/s ≥ ${TARGET.ratio}`)
printMachineState(options.devices, 'CPU µs/point')

await guard.run(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'shepherd-bench-'))
  guard.phase = `making ${options.devices} device identities`
  const { caPath, groups: [devices], elapsedMs } = await makeBenchFleet(workDir, [{ prefix: 'bench', count: options.devices }])
  console.log(`(made ${options.devices} device identities in ${(elapsedMs / 1000).toFixed(1)} s, not timed)`)
  for (const transport of options.transports) {
    for (const kind of ['shepherd', 'baseline'] as const) results.push(await measure(kind, transport, devices!, caPath))
  }
  report(results)
})
