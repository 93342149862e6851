// Child-process entry of the benchmarks: runs one broker (Shepherd or bare Aedes, per the
// BrokerSpec in argv[2]), counts the retained online statuses it publishes (and, if asked, the
// device metrics its one subscriber receives), and answers the driver's requests for its own CPU
// time, RSS and V8 heap size (see broker-handle.ts for the protocol).
import { openSync, readSync } from 'node:fs'
import { constants, monitorEventLoopDelay, PerformanceObserver } from 'node:perf_hooks'
import { getHeapStatistics } from 'node:v8'
import { startBaseline, startShepherd, type BenchBroker } from './brokers.js'
import type { BrokerSpec, Reply, Request } from './broker-handle.js'

const STATUS_TOPIC = /^shepherd\/devices\/[^/]+\/status$/
const spec = JSON.parse(process.argv[2] ?? '{}') as BrokerSpec
const collectGarbage = (globalThis as { gc?: () => void }).gc ?? (() => {})
const send = (reply: Reply): void => { process.send?.(reply) }
const sendAndExit = (reply: Reply, code: number): void => {
  if (process.send === undefined) process.exit(code)
  process.send(reply, () => process.exit(code))
}

process.on('disconnect', () => { process.exit(1) }) // the driver went away

const broker: BenchBroker = await (spec.kind === 'shepherd'
  ? startShepherd({ transport: spec.transport, dataDir: spec.dataDir, fleetCaPath: spec.fleetCaPath, databaseUrl: spec.databaseUrl, env: spec.env })
  : startBaseline(spec.transport)
).catch((error: unknown) => {
  sendAndExit({ type: 'failed', message: `could not start: ${(error as Error).message}` }, 1)
  return new Promise<never>(() => {}) // exits once the message is out
})

let online = 0
let awaited: number | undefined
const answerSessions = (): void => {
  if (awaited === undefined || online < awaited) return
  awaited = undefined
  send({ type: 'sessions', count: online })
}
// Shepherd publishes the status itself (client null); on the baseline the device does.
broker.aedes.on('publish', (packet) => {
  if (!packet.retain || !STATUS_TOPIC.test(packet.topic) || !packet.payload.toString().includes('"status":"online"')) return
  online++
  answerSessions()
})

// The baseline's ceiling for ingestion: a subscriber inside the broker that does nothing but count.
let metricMessages = 0
let lastMetricAtMs: number | null = null
if (spec.metricsSubscriber === true) {
  await new Promise<void>(resolve => {
    broker.aedes.subscribe('shepherd/devices/+/metrics', (_packet, done) => {
      metricMessages++
      lastMetricAtMs = Date.now()
      done()
    }, resolve)
  })
}

/** Collects garbage twice, a second apart, so that RSS no longer holds what startup left behind. */
async function settle (): Promise<void> {
  collectGarbage()
  await new Promise(resolve => setTimeout(resolve, 1000))
  collectGarbage()
}

// What stalls the broker's event loop during the measured phase, to tell a latency tail's cause:
// the loop's delay (10 ms resolution) and garbage collection's pauses (not settle()'s forced ones,
// whose entries arrive after it returns).
const loopDelay = monitorEventLoopDelay({ resolution: 10 })
loopDelay.enable()
const gc = { maxMs: 0, totalMs: 0 }
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    if ((((entry as { detail?: { flags?: number } }).detail?.flags ?? 0) & constants.NODE_PERFORMANCE_GC_FLAGS_FORCED) !== 0) continue
    gc.totalMs += entry.duration
    gc.maxMs = Math.max(gc.maxMs, entry.duration)
  }
}).observe({ entryTypes: ['gc'] })

async function sample (moment: 'before' | 'after'): Promise<Reply> {
  if (moment === 'before') {
    online = 0
    await settle()
    loopDelay.reset()
    gc.maxMs = gc.totalMs = 0
  }
  const { user, system } = process.cpuUsage()
  const stalls = {
    loopDelayP99Ms: loopDelay.percentile(99) / 1e6,
    loopDelayMaxMs: loopDelay.max / 1e6,
    gcPauseMaxMs: gc.maxMs,
    gcPauseTotalMs: gc.totalMs
  }
  if (moment === 'after') await settle()
  return { type: 'sample', cpuMicros: user + system, ...residentSetSize(), heapBytes: getHeapStatistics().total_heap_size, stalls }
}

// process.memoryUsage() opens /proc/self/stat on each call, which fails (EMFILE) once the devices
// have taken every descriptor; /proc/self/status opened up front can be reread at offset 0.
const procStatus = (() => { try { return openSync('/proc/self/status', 'r') } catch { return undefined } })()

/** RSS and its peak (VmHWM) in bytes, each null when it cannot be read. */
function residentSetSize (): { rssBytes: number | null, peakRssBytes: number | null } {
  try {
    if (procStatus === undefined) return { rssBytes: process.memoryUsage.rss(), peakRssBytes: null }
    const buffer = Buffer.alloc(8192)
    const text = buffer.toString('latin1', 0, readSync(procStatus, buffer, 0, buffer.length, 0))
    const kib = (field: string): number | null => {
      const value = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(text)?.[1]
      return value === undefined ? null : Number(value) * 1024
    }
    return { rssBytes: kib('VmRSS') ?? process.memoryUsage.rss(), peakRssBytes: kib('VmHWM') }
  } catch {
    return { rssBytes: null, peakRssBytes: null }
  }
}

process.on('message', (request: Request) => {
  switch (request.type) {
    case 'sample':
      void sample(request.moment).then(send)
      break
    case 'sessions':
      awaited = request.count
      answerSessions()
      break
    case 'received':
      send({ type: 'received', messages: metricMessages, lastAtMs: lastMetricAtMs })
      break
    case 'close':
      broker.close().then(
        () => { sendAndExit({ type: 'closed' }, 0) },
        (error: unknown) => { sendAndExit({ type: 'failed', message: `close: ${(error as Error).message}` }, 1) })
      break
  }
})

// The REST API's bearer token, when the driver asked for one (Shepherd only).
const apiToken = spec.apiToken === true && broker.createApiToken !== undefined
  ? await broker.createApiToken('bench').catch((error: unknown) => {
    sendAndExit({ type: 'failed', message: `could not create an API token: ${(error as Error).message}` }, 1)
    return new Promise<never>(() => {})
  })
  : undefined

send({ type: 'ready', url: broker.url, ...(broker.httpUrl === undefined ? {} : { httpUrl: broker.httpUrl }), ...(apiToken === undefined ? {} : { apiToken }) })
