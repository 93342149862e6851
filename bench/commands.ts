// Command round-trip benchmark (prints figures; not a test):
//   node --import tsx bench/commands.ts [--devices D] [--rate R] [--duration SECONDS] [--commands C]
//                                       [--transport ws|tcp] [--database pglite|postgres] [--http-connections N]
//                                       [--warmup W] [--concurrency K] [--drain-timeout SECONDS] [--timeout SECONDS]
// D devices (the reference device client, which answers `ping`) stay connected to Shepherd while
// this process issues C ping commands (default R × SECONDS) at a fixed rate of R per second,
// round-robin over the devices, with POST /api/devices/<serial>/commands over at most N keep-alive
// HTTP connections. The scheduler is open loop: a command goes out at its scheduled time whether or
// not earlier ones were answered, so a slow server cannot hide its latency (no coordinated
// omission). Each command's latency runs from its scheduled send time to the arrival of its
// `command.reply` event on GET /api/events?type=command.reply (Server-Sent Events; the server
// emits it right after storing the reply, so it marks "reply recorded"); commands are matched to
// events by their unique payload.echo, which the device's result echoes back.
// Baseline, in the same run: a bare Aedes with the same D devices connected; this process
// publishes each "command" (the same JSON message, QoS 1) straight to the device's commands topic
// at the same rate, the device echoes a reply on its replies topic (QoS 1), and this process
// receives it through its own subscription to shepherd/devices/+/replies: the broker's round-trip
// floor without REST, database or SSE. W warm-up commands (not measured) go first on each broker.
// Each broker runs in its own child process (bench/lib/broker-process.ts), which reports its CPU time
// and RSS; this process is the load generator (devices, HTTP client, SSE client). Prints commands
// issued / accepted / refused, replies, lost (no reply within the drain timeout), commands/s,
// command→reply p50/p90/p99/max, the POST's (baseline: PUBACK's) own p50/p99, Shepherd's
// round_trip_ms p50/p99, broker CPU µs per command, RSS, event-loop delay and GC pauses, side by
// side, and the target.
import http from 'node:http'
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { parseArgs } from 'node:util'
import mqtt, { type MqttClient } from 'mqtt'
import { deviceTopic } from '../src/topics.js'
import type { DeviceIdentity } from '../src/device-client/device-client.js'
import type { Transport } from './lib/brokers.js'
import { forkBroker, type BrokerKind, type BrokerProcess, type Stalls } from './lib/broker-handle.js'
import { baselineDevice, connectAll, disconnectAll, shepherdDevice, type Session } from './lib/load.js'
import {
  createThrowawayDatabase, machineDescription, printMachineState, type ThrowawayDatabase
} from './lib/environment.js'
import { makeBenchFleet } from './lib/fleet.js'
import { mib, thousands, percentile } from './lib/figures.js'
import { guardRun } from './lib/run-guard.js'
import { optionChecks, type OptionChecks } from './lib/options.js'

const MAX_DEVICES = 20_000
const TARGET = { devices: 2000, rate: 200, p99Ms: 50 }
/** Commands outlive the run (and the drain timeout) but do not pile up in the table forever. */
const COMMAND_TTL_SECONDS = 300
const REPLIES_TOPIC = 'shepherd/devices/+/replies'
const DRAIN_POLL_MS = 20

interface Options {
  devices: number
  rate: number
  commands: number
  transport: Transport
  database: 'pglite' | 'postgres'
  httpConnections: number
  warmup: number
  concurrency: number
  drainTimeoutSeconds: number
  timeoutSeconds: number
}

const checks: OptionChecks = optionChecks(`node --import tsx bench/commands.ts [--devices 1..${MAX_DEVICES}] [--rate R] [--duration SECONDS] ` +
    '[--commands C] [--transport ws|tcp] [--database pglite|postgres] [--http-connections N] [--warmup W] [--concurrency K] ' +
    '[--drain-timeout SECONDS] [--timeout SECONDS]')

function parseOptions (): Options {
  const { values } = parseArgs({
    options: {
      devices: { type: 'string', default: '2000' },
      rate: { type: 'string', default: '200' },
      duration: { type: 'string', default: '20' },
      commands: { type: 'string' },
      transport: { type: 'string', default: 'ws' },
      database: { type: 'string', default: 'postgres' },
      'http-connections': { type: 'string', default: '50' },
      warmup: { type: 'string', default: '200' },
      concurrency: { type: 'string', default: '100' },
      'drain-timeout': { type: 'string', default: '10' },
      timeout: { type: 'string', default: '600' }
    }
  })
  if (values.transport !== 'ws' && values.transport !== 'tcp') checks.usage('--transport must be ws or tcp')
  if (values.database !== 'pglite' && values.database !== 'postgres') checks.usage('--database must be pglite or postgres')
  const rate = checks.integer('rate', values.rate, 100_000)
  const duration = checks.integer('duration', values.duration, 3600)
  return {
    devices: checks.integer('devices', values.devices, MAX_DEVICES),
    rate,
    commands: values.commands === undefined ? rate * duration : checks.integer('commands', values.commands, 10_000_000),
    transport: values.transport,
    database: values.database,
    httpConnections: checks.integer('http-connections', values['http-connections'], 10_000),
    warmup: checks.integer('warmup', values.warmup, 100_000, 0),
    concurrency: checks.integer('concurrency', values.concurrency, MAX_DEVICES),
    drainTimeoutSeconds: checks.integer('drain-timeout', values['drain-timeout'], 3600),
    timeoutSeconds: checks.integer('timeout', values.timeout, 86_400)
  }
}

const options = parseOptions()
const live = new Set<BrokerProcess>()
/** Things of the load generator to close on an abort (HTTP agent, SSE stream, the baseline's commander). */
const closers = new Set<() => void>()
let database: ThrowawayDatabase | undefined
let workDir: string | undefined
/** Filled as each broker's run completes: an aborted run still reports those. */
const results: Figures[] = []

async function dropDatabase (): Promise<void> {
  const db = database
  database = undefined
  await db?.drop().catch((error: unknown) => { console.error(`could not drop the benchmark database: ${(error as Error).message}`) })
}

async function cleanUp (): Promise<void> {
  for (const close of closers) close()
  closers.clear()
  for (const broker of live) broker.kill()
  await dropDatabase()
  if (workDir !== undefined) await rm(workDir, { recursive: true, force: true })
}

const guard = guardRun({
  timeoutSeconds: options.timeoutSeconds,
  reportPartial: () => { if (results.length > 0) report(results); return results.length > 0 },
  cleanUp
})

// ---------------------------------------------------------------------------------------------
// One command's life, and the two ways of sending one

/** What the broker said to the request itself: 202 (Shepherd) or PUBACK (baseline). */
type Answer = { ok: true, queued: boolean } | { ok: false, error: string }

interface CommandRecord {
  /** performance.now() */
  scheduledAt: number
  sentAt: number
  answeredAt?: number
  answer?: Answer
  replyAt?: number
  /** Shepherd's round_trip_ms from the event (delivery → reply, as the server measured it). */
  roundTripMs?: number | null
}

/** Sends commands to one broker; replies come back through `onReply` (set by the run). */
interface Commander {
  issue (serial: string, echo: string): Promise<Answer>
  /** Set by the run: a reply to the command whose payload.echo is `echo`, received at `at` (performance.now()). */
  onReply: (echo: string, at: number, roundTripMs: number | null) => void
  /** The reply channel failed (the SSE stream closed, the commander's connection dropped). */
  failure: string | undefined
  close (): void
}

const EVENT_PATH = '/api/events?type=command.reply'

/** Shepherd: POSTs over a bounded keep-alive pool; replies from one SSE stream of command.reply events. */
async function shepherdCommander (httpUrl: string, token: string): Promise<Commander> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: options.httpConnections, maxFreeSockets: options.httpConnections })
  const authorization = `Bearer ${token}`
  let events: http.IncomingMessage | undefined
  let eventsRequest: http.ClientRequest | undefined
  let closed = false
  const commander: Commander = {
    onReply: () => {},
    failure: undefined,
    issue: (serial, echo) => new Promise<Answer>((resolve) => {
      const body = JSON.stringify({ command: 'ping', payload: { echo }, ttl_seconds: COMMAND_TTL_SECONDS })
      const request = http.request(`${httpUrl}/api/devices/${encodeURIComponent(serial)}/commands`, {
        method: 'POST',
        agent,
        headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), authorization }
      }, (response) => {
        const chunks: string[] = []
        response.setEncoding('utf8')
        response.on('data', (chunk: string) => { chunks.push(chunk) })
        response.on('error', (error) => { resolve({ ok: false, error: `response: ${error.message}` }) })
        response.on('end', () => {
          const text = chunks.join('')
          if (response.statusCode !== 202) {
            resolve({ ok: false, error: `HTTP ${response.statusCode}: ${text.slice(0, 300)}` })
            return
          }
          let state: unknown
          try { state = (JSON.parse(text) as { state?: unknown }).state } catch {}
          resolve({ ok: true, queued: state === 'queued' })
        })
      })
      request.on('error', (error) => { resolve({ ok: false, error: `request: ${error.message}` }) })
      request.end(body)
    }),
    close: () => {
      closed = true
      eventsRequest?.destroy()
      events?.destroy()
      agent.destroy()
    }
  }

  // The event stream: frames "event: command.reply\ndata: {...}\n\n", comments ": …\n\n".
  await new Promise<void>((resolve, reject) => {
    eventsRequest = http.get(`${httpUrl}${EVENT_PATH}`, { agent: false, headers: { authorization, accept: 'text/event-stream' } }, (response) => {
      if (response.statusCode !== 200) {
        response.resume()
        reject(new Error(`GET ${EVENT_PATH} answered HTTP ${response.statusCode}`))
        return
      }
      events = response
      response.setEncoding('utf8')
      let buffer = ''
      let connected = false
      response.on('data', (chunk: string) => {
        const at = performance.now()
        buffer += chunk
        for (let end = buffer.indexOf('\n\n'); end >= 0; end = buffer.indexOf('\n\n')) {
          const frame = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          if (!connected && frame.startsWith(': connected')) {
            connected = true
            resolve()
            continue
          }
          let type: string | undefined
          const data: string[] = []
          for (const line of frame.split('\n')) {
            if (line.startsWith('event:')) type = line.slice(6).trim()
            else if (line.startsWith('data:')) data.push(line.slice(5).replace(/^ /, ''))
          }
          if (type !== 'command.reply' || data.length === 0) continue
          try {
            const event = JSON.parse(data.join('\n')) as { result?: { echo?: unknown }, round_trip_ms?: unknown }
            const echo = event.result?.echo
            if (typeof echo === 'string') commander.onReply(echo, at, typeof event.round_trip_ms === 'number' ? event.round_trip_ms : null)
          } catch {}
        }
      })
      response.on('close', () => {
        if (!closed) commander.failure ??= 'the event stream (GET /api/events) closed during the run'
        if (!connected) reject(new Error(`GET ${EVENT_PATH} closed before ": connected"`))
      })
    })
    eventsRequest.on('error', (error) => {
      if (!closed) commander.failure ??= `event stream: ${error.message}`
      reject(error)
    })
  })
  return commander
}

/** The command message of contract §3, as Shepherd publishes it. */
function commandMessage (echo: string): string {
  const issuedAt = new Date()
  return JSON.stringify({
    id: randomUUID(), command: 'ping', payload: { echo },
    issued_at: issuedAt.toISOString(), expires_at: new Date(issuedAt.getTime() + COMMAND_TTL_SECONDS * 1000).toISOString()
  })
}

/** Baseline: one MQTT client publishes commands (QoS 1) and receives every device's replies. */
async function baselineCommander (url: string): Promise<Commander> {
  const client: MqttClient = mqtt.connect(url, { clientId: `bench-commander-${process.pid}`, protocolVersion: 4, clean: true, reconnectPeriod: 0, connectTimeout: 10_000 })
  let closed = false
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => { resolve() })
    client.once('error', reject)
  })
  // one connection carries every command: without this, Nagle holds each publish over TCP behind
  // the previous one's ACK (ws sets it on its sockets itself, as Node's HTTP client does)
  const socket = client.stream as { setNoDelay?: (noDelay: boolean) => unknown }
  socket.setNoDelay?.(true)
  const commander: Commander = {
    onReply: () => {},
    failure: undefined,
    issue: async (serial, echo) => {
      try {
        await client.publishAsync(deviceTopic(serial, 'commands'), commandMessage(echo), { qos: 1 })
        return { ok: true, queued: false }
      } catch (error) {
        return { ok: false, error: (error as Error).message }
      }
    },
    close: () => {
      closed = true
      client.end(true)
    }
  }
  client.on('message', (_topic, payload) => {
    const at = performance.now()
    try {
      const echo = (JSON.parse(payload.toString('utf8')) as { result?: { echo?: unknown } }).result?.echo
      if (typeof echo === 'string') commander.onReply(echo, at, null)
    } catch {}
  })
  client.on('close', () => { if (!closed) commander.failure ??= 'the commander\'s MQTT connection closed during the run' })
  const granted = await client.subscribeAsync(REPLIES_TOPIC, { qos: 1 })
  if (granted.some(grant => grant.qos === 0x80)) throw new Error(`subscription to ${REPLIES_TOPIC} refused`)
  return commander
}

/** Baseline devices: answer ping as the reference device client does (a QoS 1 reply echoing payload.echo). */
function answerPings (sessions: readonly Session[]): void {
  for (const { mqtt: client } of sessions) {
    const serial = client.options.clientId!
    const commandsTopic = deviceTopic(serial, 'commands')
    const repliesTopic = deviceTopic(serial, 'replies')
    client.on('message', (topic, payload) => {
      if (topic !== commandsTopic) return
      let command: { id: string, command: string, payload?: { echo?: unknown } }
      try { command = JSON.parse(payload.toString('utf8')) } catch { return }
      if (command.command !== 'ping') return
      client.publishAsync(repliesTopic, JSON.stringify({ id: command.id, status: 'ok', result: { echo: command.payload?.echo ?? null } }), { qos: 1 })
        .catch(() => {})
    })
  }
}

// ---------------------------------------------------------------------------------------------
// The open-loop run

interface Run {
  records: CommandRecord[]
  startedAt: number
  lastSentAt: number
  /** When the drain ended: every accepted command answered, or the drain timeout. */
  endedAt: number
  duplicateReplies: number
  unknownReplies: number
}

/**
 * Issues `count` commands at options.rate, round-robin over `serials`, without waiting for answers;
 * then waits until each accepted command has its reply or --drain-timeout has passed since the last send.
 */
async function runCommands (commander: Commander, serials: readonly string[], count: number, label: string, what: string): Promise<Run> {
  const records: CommandRecord[] = new Array(count)
  const byEcho = new Map<string, CommandRecord>()
  const run: Run = { records, startedAt: 0, lastSentAt: 0, endedAt: 0, duplicateReplies: 0, unknownReplies: 0 }
  let replies = 0
  let answered = 0
  let accepted = 0
  commander.onReply = (echo, at, roundTripMs) => {
    const record = byEcho.get(echo)
    if (record === undefined) { run.unknownReplies++; return }
    if (record.replyAt !== undefined) { run.duplicateReplies++; return }
    record.replyAt = at
    record.roundTripMs = roundTripMs
    replies++
  }
  const intervalMs = 1000 / options.rate
  const fire = (i: number, scheduledAt: number): void => {
    const echo = `${label}-${i}`
    const record: CommandRecord = { scheduledAt, sentAt: performance.now() }
    records[i] = record
    byEcho.set(echo, record)
    void commander.issue(serials[i % serials.length]!, echo).then((answer) => {
      record.answeredAt = performance.now()
      record.answer = answer
      answered++
      if (answer.ok) accepted++
    })
  }
  run.startedAt = performance.now()
  let next = 0
  await new Promise<void>((resolve) => {
    const tick = (): void => {
      const now = performance.now()
      for (; next < count && run.startedAt + next * intervalMs <= now; next++) fire(next, run.startedAt + next * intervalMs)
      guard.phase = `${what}: ${next} of ${count} commands issued, ${replies} replies`
      if (next >= count) { resolve(); return }
      setTimeout(tick, Math.max(0, run.startedAt + next * intervalMs - performance.now()))
    }
    tick()
  })
  run.lastSentAt = records[count - 1]?.sentAt ?? run.startedAt
  const drainUntil = performance.now() + options.drainTimeoutSeconds * 1000
  for (;;) {
    guard.phase = `${what}: waiting for replies (${replies} of ${accepted} accepted, ${count - answered} requests unanswered)`
    if ((answered === count && replies >= accepted) || performance.now() > drainUntil) break
    await sleep(DRAIN_POLL_MS)
  }
  run.endedAt = performance.now()
  commander.onReply = () => {}
  return run
}

// ---------------------------------------------------------------------------------------------
// One broker, measured

interface Figures {
  kind: BrokerKind
  connected: number
  refused: number
  firstConnectError: string | undefined
  issued: number
  accepted: number
  queued: number
  /** Non-202 answers (baseline: failed publishes), and requests not answered within the drain. */
  failed: number
  unanswered: number
  firstError: string | undefined
  replies: number
  lost: number
  duplicateReplies: number
  unknownReplies: number
  replyChannelFailure: string | undefined
  /** First scheduled send → last send / → last reply (ms). */
  issuingMs: number
  repliesMs: number
  /** Scheduled send → reply, for the commands answered (ascending, ms). */
  latencyMs: number[]
  /** Send → 202 (baseline: → PUBACK). */
  answerMs: number[]
  /** Shepherd's round_trip_ms (delivery → reply recorded). */
  roundTripMs: number[]
  /** Send time − scheduled time: the load generator's own lag. */
  lagMs: number[]
  warmup: string | undefined
  errorReports: number
  firstReport: string | undefined
  brokerCpuMicros: number
  rssBeforeBytes: number | null
  rssAfterBytes: number | null
  peakRssBytes: number | null
  brokerStalls: Stalls
  loadCpuMicros: number
}

const ascending = (values: number[]): number[] => values.sort((a, b) => a - b)

function figuresOf (kind: BrokerKind, run: Run): Omit<Figures, 'connected' | 'refused' | 'firstConnectError' | 'warmup' | 'errorReports' | 'firstReport' |
'brokerCpuMicros' | 'rssBeforeBytes' | 'rssAfterBytes' | 'peakRssBytes' | 'brokerStalls' | 'loadCpuMicros' | 'replyChannelFailure'> {
  const { records } = run
  const acceptedRecords = records.filter(r => r.answer?.ok === true)
  const failedRecords = records.filter(r => r.answer !== undefined && !r.answer.ok)
  const answered = records.filter(r => r.replyAt !== undefined)
  const lastReplyAt = answered.reduce((last, r) => Math.max(last, r.replyAt!), -Infinity)
  return {
    kind,
    issued: records.length,
    accepted: acceptedRecords.length,
    queued: acceptedRecords.filter(r => r.answer?.ok === true && r.answer.queued).length,
    failed: failedRecords.length,
    unanswered: records.filter(r => r.answer === undefined).length,
    firstError: failedRecords.map(r => (r.answer as { error: string }).error)[0],
    replies: answered.length,
    lost: acceptedRecords.filter(r => r.replyAt === undefined).length,
    duplicateReplies: run.duplicateReplies,
    unknownReplies: run.unknownReplies,
    issuingMs: run.lastSentAt - run.startedAt,
    repliesMs: answered.length === 0 ? NaN : lastReplyAt - run.startedAt,
    latencyMs: ascending(answered.map(r => r.replyAt! - r.scheduledAt)),
    answerMs: ascending(records.filter(r => r.answeredAt !== undefined).map(r => r.answeredAt! - r.sentAt)),
    roundTripMs: ascending(answered.flatMap(r => typeof r.roundTripMs === 'number' ? [r.roundTripMs] : [])),
    lagMs: ascending(records.map(r => r.sentAt - r.scheduledAt))
  }
}

async function measure (kind: BrokerKind, identities: readonly DeviceIdentity[], caPath: string): Promise<Figures> {
  if (kind === 'shepherd' && options.database === 'postgres') {
    guard.phase = 'creating the PostgreSQL database'
    database = await createThrowawayDatabase()
  }
  guard.phase = `starting the ${kind} broker (${options.transport})`
  const broker = await forkBroker({
    kind,
    transport: options.transport,
    dataDir: path.join(workDir!, kind),
    fleetCaPath: caPath,
    databaseUrl: kind === 'shepherd' ? database?.url : undefined,
    env: { LOG_LEVEL: 'warn' },
    apiToken: kind === 'shepherd'
  })
  live.add(broker)
  guard.phase = `connecting ${identities.length} devices to ${kind}`
  const connected = await connectAll(identities, options.concurrency, kind === 'shepherd' ? shepherdDevice(broker.url) : baselineDevice(broker.url))
  guard.phase = `waiting for ${kind} to publish ${connected.sessions.length} retained statuses`
  await broker.sessions(connected.sessions.length)
  if (connected.sessions.length === 0) throw new Error(`no device connected to ${kind}: ${connected.refusals[0]?.message ?? 'no refusal recorded'}`)
  if (kind === 'baseline') answerPings(connected.sessions)
  let errorReports = 0
  let firstReport: string | undefined
  for (const { mqtt: client } of connected.sessions) {
    client.on('message', (topic, message) => {
      if (!topic.endsWith('/errors')) return
      errorReports++
      firstReport ??= message.toString()
    })
  }
  const serials = connected.sessions.map(session => session.mqtt.options.clientId!)

  guard.phase = `opening the ${kind} command channel`
  let commander: Commander
  if (kind === 'shepherd') {
    if (broker.httpUrl === undefined || broker.apiToken === undefined) throw new Error('the Shepherd broker process handed over no REST API URL or token')
    commander = await shepherdCommander(broker.httpUrl, broker.apiToken)
  } else {
    commander = await baselineCommander(broker.url)
  }
  const closeCommander = (): void => { commander.close() }
  closers.add(closeCommander)

  let warmup: string | undefined
  if (options.warmup > 0) {
    const warm = figuresOf(kind, await runCommands(commander, serials, options.warmup, 'warmup', `warming up ${kind}`))
    warmup = `${warm.replies} of ${warm.issued} replied, ${warm.failed} refused, p99 ${percentile(warm.latencyMs, 99).toFixed(1)} ms`
  }

  const before = await broker.sample('before')
  const loadCpu = process.cpuUsage()
  const run = await runCommands(commander, serials, options.commands, 'bench', `measuring ${kind}`)
  const loadCpuUsed = process.cpuUsage(loadCpu)
  const after = await broker.sample('after')
  const replyChannelFailure = commander.failure

  guard.phase = `closing ${kind}`
  commander.close()
  closers.delete(closeCommander)
  await disconnectAll(connected.sessions)
  await broker.close()
  live.delete(broker)
  await dropDatabase()
  return {
    ...figuresOf(kind, run),
    connected: connected.sessions.length,
    refused: connected.refusals.length,
    firstConnectError: (connected.refusals[0] ?? connected.sessionFailures[0])?.message,
    replyChannelFailure,
    warmup,
    errorReports,
    firstReport,
    brokerCpuMicros: after.cpuMicros - before.cpuMicros,
    rssBeforeBytes: before.rssBytes,
    rssAfterBytes: after.rssBytes,
    peakRssBytes: after.peakRssBytes,
    brokerStalls: after.stalls,
    loadCpuMicros: loadCpuUsed.user + loadCpuUsed.system
  }
}

// ---------------------------------------------------------------------------------------------
// Report

const ms = (sorted: readonly number[], ...ps: number[]): string =>
  sorted.length === 0 ? 'n/a' : ps.map(p => percentile(sorted, p).toFixed(1)).join(' / ')
const maxOf = (sorted: readonly number[]): number => sorted.length === 0 ? NaN : sorted[sorted.length - 1]!
const verdict = (met: boolean): string => met ? 'met' : 'MISSED'

function report (all: readonly Figures[]): void {
  const rows: Array<[string, (f: Figures) => string]> = [
    ['devices connected / refused', f => `${f.connected} / ${f.refused}`],
    ['commands issued', f => thousands(f.issued)],
    ['accepted (202 / PUBACK)', f => thousands(f.accepted)],
    ['  of them queued (device offline)', f => f.kind === 'shepherd' ? thousands(f.queued) : 'n/a'],
    ['refused (non-202 / failed publish)', f => thousands(f.failed)],
    ['requests unanswered at the end', f => thousands(f.unanswered)],
    ['replies received', f => thousands(f.replies)],
    [`lost (no reply within ${options.drainTimeoutSeconds} s)`, f => thousands(f.lost)],
    ['commands issued/s (achieved)', f => (f.issued / ((f.issuingMs + 1000 / options.rate) / 1000)).toFixed(1)],
    ['replies/s (to the last reply)', f => (f.replies / (f.repliesMs / 1000)).toFixed(1)],
    ['command→reply p50 / p90 (ms)', f => ms(f.latencyMs, 50, 90)],
    ['command→reply p99 / max (ms)', f => `${ms(f.latencyMs, 99)} / ${maxOf(f.latencyMs).toFixed(1)}`],
    ['request→answer p50 / p99 (ms)', f => ms(f.answerMs, 50, 99)],
    ['server round_trip_ms p50 / p99', f => f.kind === 'shepherd' ? ms(f.roundTripMs, 50, 99) : 'n/a'],
    ['scheduler lag p99 / max (ms)', f => `${ms(f.lagMs, 99)} / ${maxOf(f.lagMs).toFixed(1)}`],
    ['broker CPU µs/command', f => (f.brokerCpuMicros / f.issued).toFixed(0)],
    ['broker CPU busy (% of one core)', f => (f.brokerCpuMicros / 10 / f.repliesMs).toFixed(0)],
    ['broker event-loop delay p99 / max (ms)', f => `${f.brokerStalls.loopDelayP99Ms.toFixed(1)} / ${f.brokerStalls.loopDelayMaxMs.toFixed(1)}`],
    ['broker GC pause max / total (ms)', f => `${f.brokerStalls.gcPauseMaxMs.toFixed(1)} / ${f.brokerStalls.gcPauseTotalMs.toFixed(0)}`],
    ['broker RSS MiB before → after', f => `${mib(f.rssBeforeBytes)} → ${mib(f.rssAfterBytes)}`],
    ['broker peak RSS MiB (VmHWM)', f => mib(f.peakRssBytes)],
    ['load generator busy (% of core)', f => (f.loadCpuMicros / 10 / f.repliesMs).toFixed(0)],
    ['errors-topic reports', f => String(f.errorReports)]
  ]
  const width = Math.max(...rows.map(([label]) => label.length)) + 2
  console.log(`\n${''.padEnd(width)}${all.map(f => f.kind.padStart(20)).join('')}`)
  for (const [label, cell] of rows) console.log(`${label.padEnd(width)}${all.map(f => cell(f).padStart(20)).join('')}`)
  for (const f of all) {
    if (f.warmup !== undefined) console.log(`${f.kind}: warm-up (${options.warmup} commands, not measured): ${f.warmup}`)
    if (f.firstConnectError !== undefined) console.log(`${f.kind}: first connect error: ${f.firstConnectError}`)
    if (f.firstError !== undefined) console.log(`${f.kind}: first error: ${f.firstError}`)
    if (f.replyChannelFailure !== undefined) console.log(`${f.kind}: reply channel failed: ${f.replyChannelFailure}`)
    if (f.duplicateReplies > 0 || f.unknownReplies > 0) console.log(`${f.kind}: ${f.duplicateReplies} duplicate and ${f.unknownReplies} unmatched replies`)
    if (f.firstReport !== undefined) console.log(`${f.kind}: first errors-topic report: ${f.firstReport}`)
  }
  const shepherd = all.find(f => f.kind === 'shepherd')
  const baseline = all.find(f => f.kind === 'baseline')
  if (shepherd === undefined) return
  const p99 = percentile(shepherd.latencyMs, 99)
  if (baseline !== undefined) {
    console.log(`\nShepherd − baseline command→reply p50 / p99: ${(percentile(shepherd.latencyMs, 50) - percentile(baseline.latencyMs, 50)).toFixed(1)} / ` +
      `${(p99 - percentile(baseline.latencyMs, 99)).toFixed(1)} ms; broker CPU per command Shepherd/baseline: ` +
      `${(shepherd.brokerCpuMicros / baseline.brokerCpuMicros).toFixed(1)}×`)
  }
  const complete = shepherd.failed === 0 && shepherd.lost === 0 && shepherd.unanswered === 0 && shepherd.replyChannelFailure === undefined
  const atTargetLoad = shepherd.connected >= TARGET.devices && options.rate >= TARGET.rate
  console.log(`targets: Target p99 < ${TARGET.p99Ms} ms at ${TARGET.devices} devices and ${TARGET.rate} commands/s: ` +
    `p99 REST→reply recorded ${p99.toFixed(1)} ms at ${shepherd.connected} devices and ${options.rate} commands/s` +
    `${complete ? '' : ` (with ${shepherd.failed} refused, ${shepherd.unanswered} unanswered and ${shepherd.lost} lost commands)`}: ` +
    `${verdict(p99 < TARGET.p99Ms && complete)}${atTargetLoad ? '' : ' (below the target\'s load: not conclusive)'}`)
}

console.log('Shepherd command round-trip benchmark')
console.log(`workload: ${options.devices} devices over ${options.transport === 'ws' ? 'MQTT over WebSocket' : 'MQTT over TCP'}, ` +
  `${thousands(options.commands)} ping commands at ${options.rate}/s (${(options.commands / options.rate).toFixed(1)} s) round-robin over the devices, ` +
  `open loop; database ${options.database} (Shepherd only); ${options.httpConnections} keep-alive HTTP connections at most; ` +
  `${options.warmup} warm-up commands per broker (not measured); drain timeout ${options.drainTimeoutSeconds} s, timeout ${options.timeoutSeconds} s`)
console.log(`machine: ${machineDescription()}`)
console.log('Shepherd: POST /api/devices/<serial>/commands {"command":"ping","payload":{"echo":…}} (bearer token) → the server publishes it on ' +
  'shepherd/devices/<serial>/commands → the reference device client replies on …/replies → the server stores the reply and emits ' +
  `command.reply on GET ${EVENT_PATH} (one SSE stream), where this process takes the reply's arrival time` +
  (options.database === 'postgres' ? '; a fresh PostgreSQL database (127.0.0.1:5432)' : '; PGlite in memory'))
console.log('baseline: bare Aedes (stock in-memory persistence, no hooks) on the same transport, the same devices (plain mqtt.js clients that echo ' +
  'ping like the reference client); this process publishes each command (QoS 1) to shepherd/devices/<serial>/commands and receives the ' +
  `reply through its own subscription to ${REPLIES_TOPIC}: the broker's round-trip floor without REST, database or SSE`)
console.log('each broker runs alone in a child process: broker CPU and RSS are that process\'s own ' +
  (options.database === 'postgres' ? '(PostgreSQL\'s CPU is not counted); ' : '(PGlite runs inside it: its CPU and memory are counted); ') +
  'this process (devices, HTTP and SSE clients) is the load generator')
console.log('command→reply: from the command\'s scheduled send time (the POST or publish goes out then unless the load generator lags; ' +
  'its lag is shown) to the arrival of its reply (Shepherd: the command.reply event), for the commands that got one; lost = accepted but no reply. ' +
  'request→answer: Shepherd POST → 202, baseline publish → PUBACK. round_trip_ms: Shepherd\'s own figure, delivery → reply. ' +
  'replies/s = replies / time from the first scheduled send to the last reply')
console.log(`target: p99 REST→reply recorded < ${TARGET.p99Ms} ms at ${TARGET.devices} devices and ${TARGET.rate} commands/s, no command lost`)
printMachineState(options.devices, 'CPU µs/command')

await guard.run(async () => {
  workDir = await mkdtemp(path.join(os.tmpdir(), 'shepherd-bench-'))
  guard.phase = `making ${options.devices} device identities`
  const { caPath, groups: [devices], elapsedMs } = await makeBenchFleet(workDir, [{ prefix: 'bench', count: options.devices }])
  console.log(`(made ${options.devices} device identities in ${(elapsedMs / 1000).toFixed(1)} s, not timed)`)
  for (const kind of ['shepherd', 'baseline'] as const) results.push(await measure(kind, devices!, caPath))
  report(results)
})
