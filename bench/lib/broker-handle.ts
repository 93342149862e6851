// The driver's side of a benchmark broker process: forks bench/lib/broker-process.ts (one broker
// per process, so its CPU and RSS are its own) and talks to it over the IPC channel. The message
// types here are the whole protocol between the two.
import { fork, type ChildProcess } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Transport } from './brokers.js'

export type BrokerKind = 'shepherd' | 'baseline'

export interface BrokerSpec {
  kind: BrokerKind
  transport: Transport
  /** Shepherd only. */
  dataDir: string
  fleetCaPath: string
  databaseUrl: string | undefined
  /** More environment for Shepherd's loadConfig (METRICS_HANDLERS, for example). */
  env?: Record<string, string>
  /** Baseline: one in-process subscriber to every device's `metrics` topic that only counts (see the `received` request). */
  metricsSubscriber?: boolean
  /** Shepherd only: create an operator API token in the broker process and hand it over with `ready`. */
  apiToken?: boolean
  /** Write V8 CPU profiles of the broker process to <profileDir>/<kind>/ (node --cpu-prof). */
  profileDir?: string
}

/**
 * CPU time (user + system, all threads), resident set size and its peak over the process's life
 * (VmHWM) of the broker process, null if unreadable; and the size of V8's heap (RSS minus it is
 * native memory: OpenSSL, sockets, buffers, PGlite's WebAssembly memory).
 */
export interface Sample { cpuMicros: number, rssBytes: number | null, peakRssBytes: number | null, heapBytes: number, stalls: Stalls }

/**
 * Since the 'before' sample: the broker's event-loop delay (p99 and max, 10 ms resolution; the
 * loop's own wait included) and garbage collection's longest pause and total pause time, in ms.
 */
export interface Stalls { loopDelayP99Ms: number, loopDelayMaxMs: number, gcPauseMaxMs: number, gcPauseTotalMs: number }

/** What the baseline's metrics subscriber has had: messages, and when the last one came (Date.now(), null before any). */
export interface Received { messages: number, lastAtMs: number | null }

export type Request =
  /**
   * Before the measured phase: forget the statuses seen so far (warm-up), settle (collect garbage,
   * let freed pages go back), read CPU and RSS. After it: read CPU, then settle and read RSS.
   */
  | { type: 'sample', moment: 'before' | 'after' }
  /** Answer once `count` devices have had their retained online status published by the broker. */
  | { type: 'sessions', count: number }
  /** Answer at once with what the metrics subscriber has received (spec.metricsSubscriber). */
  | { type: 'received' }
  | { type: 'close' }

export type Reply =
  /** httpUrl: Shepherd's REST API; apiToken: when spec.apiToken asked for one. */
  | { type: 'ready', url: string, httpUrl?: string, apiToken?: string }
  | ({ type: 'sample' } & Sample)
  | { type: 'sessions', count: number }
  | ({ type: 'received' } & Received)
  | { type: 'closed' }
  | { type: 'failed', message: string }

export interface BrokerProcess {
  readonly url: string
  /** Shepherd only: http://127.0.0.1:<port> of its REST API. */
  readonly httpUrl: string | undefined
  /** Shepherd with spec.apiToken only: a bearer token for the REST API. */
  readonly apiToken: string | undefined
  sample (moment: 'before' | 'after'): Promise<Sample>
  sessions (count: number): Promise<void>
  received (): Promise<Received>
  close (): Promise<void>
  /** SIGKILL (aborts only). */
  kill (): void
}

const ENTRY = fileURLToPath(new URL('./broker-process.ts', import.meta.url))

export async function forkBroker (spec: BrokerSpec): Promise<BrokerProcess> {
  // one profile per thread (tsx runs its loader in a worker): the main thread's is the largest
  const profile = spec.profileDir === undefined ? [] : ['--cpu-prof', '--cpu-prof-dir', path.join(spec.profileDir, spec.kind)]
  const child: ChildProcess = fork(ENTRY, [JSON.stringify(spec)], { execArgv: ['--import', 'tsx', '--expose-gc', ...profile] })
  let pending: { type: Reply['type'], resolve: (reply: Reply) => void, reject: (error: Error) => void } | undefined
  let exited: Error | undefined

  const settle = (reply: Reply | Error): void => {
    const waiter = pending
    pending = undefined
    if (waiter === undefined) return
    if (reply instanceof Error) waiter.reject(reply)
    else if (reply.type === 'failed') waiter.reject(new Error(`${spec.kind} broker: ${reply.message}`))
    else if (reply.type !== waiter.type) waiter.reject(new Error(`${spec.kind} broker answered ${reply.type}, expected ${waiter.type}`))
    else waiter.resolve(reply)
  }
  child.on('message', (reply: Reply) => { settle(reply) })
  child.on('exit', (code, signal) => {
    exited = new Error(`${spec.kind} broker process exited (${signal ?? `code ${code}`})`)
    settle(exited)
  })

  const expect = <T extends Reply['type']>(type: T, request?: Request): Promise<Extract<Reply, { type: T }>> => {
    if (exited !== undefined) return Promise.reject(exited)
    if (pending !== undefined) return Promise.reject(new Error('one request at a time'))
    return new Promise((resolve, reject) => {
      pending = { type, resolve: resolve as (reply: Reply) => void, reject }
      if (request !== undefined) child.send(request)
    })
  }

  const { url, httpUrl, apiToken } = await expect('ready')
  return {
    url,
    httpUrl,
    apiToken,
    sample: async (moment) => {
      const { cpuMicros, rssBytes, peakRssBytes, heapBytes, stalls } = await expect('sample', { type: 'sample', moment })
      return { cpuMicros, rssBytes, peakRssBytes, heapBytes, stalls }
    },
    sessions: async (count) => { await expect('sessions', { type: 'sessions', count }) },
    received: async () => {
      const { messages, lastAtMs } = await expect('received', { type: 'received' })
      return { messages, lastAtMs }
    },
    close: async () => {
      const gone = new Promise(resolve => { if (exited !== undefined) resolve(undefined); else child.once('exit', resolve) })
      await expect('closed', { type: 'close' })
      await gone
    },
    kill: () => { if (exited === undefined) child.kill('SIGKILL') }
  }
}
