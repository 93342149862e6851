// The metrics pipeline between the broker and the handlers. The gateway hands it every `metrics`
// publish of a device (inside authorizePublish, before the PUBACK); valid points wait in a bounded
// queue and leave it in batches (MAX_BATCH_POINTS or MAX_BATCH_DELAY_MS, whichever comes first),
// each batch with a uuid, to every handler at once. Every handler has its own bounded backlog and
// runs one batch at a time, so a slow or failing handler never holds up another.
//
// A handler whose `handle` has not settled after HANDLER_TIMEOUT_MS is stalled: that batch counts
// as failed for it, and until the call settles it is called no more and loses its oldest batches
// like a lossy handler, so a hung handler cannot pace the devices (nor grow memory) for the rest.
//
// Backpressure: when the queue reaches its high-water mark (`queuePoints`) the pipeline is
// saturated until it drains to the low-water mark (half). While saturated, a publish is held:
// its `done` (which lets Aedes acknowledge it and read on from that connection) is called once
// the pipeline has drained and the publish's points are queued, so QoS 1 data is slowed, not
// lost; QoS 0 points are dropped and counted (and their connection is held back too). A handler
// that is not lossy and whose backlog is full stops batches from leaving the queue, which then
// fills up and saturates: the slowest non-lossy handler paces the devices.
//
// Bounds: queue ≤ queuePoints + MAX_POINTS_PER_MESSAGE points; each handler ≤
// (HANDLER_BACKLOG_BATCHES + 1) × MAX_BATCH_POINTS points; held publishes keep their payload (the
// packet Aedes holds anyway), at most MAX_HELD_BYTES in all — beyond that a QoS 1 publish's
// connection is closed without acknowledging it (the device sends it again). A held connection
// reads nothing, so each holds at most what one socket read parsed.
import { randomUUID } from 'node:crypto'
import { performance } from 'node:perf_hooks'
import type { Logger } from '../logger.js'
import type { MetricBatch, MetricPoint, MetricsHandler } from './types.js'
import { describeRejection, parseMetricsPayload, type PayloadRejection, type PointRejection } from './points.js'

export const MAX_BATCH_POINTS = 1000
export const MAX_BATCH_DELAY_MS = 50
export const HANDLER_BACKLOG_BATCHES = 2
/** Payload bytes of held QoS 1 publishes, at most. */
export const MAX_HELD_BYTES = 16 * 1024 * 1024
/**
 * How long shutdown waits for the handlers to take what is queued: with the handlers' own close
 * after it (postgres: at most 5 s + 1 s) it fits inside the grace period of `shepherd start` (15 s).
 */
export const FLUSH_TIMEOUT_MS = 4_000
/** How long a handler's `handle` may take before the handler counts as stalled. */
export const HANDLER_TIMEOUT_MS = 30_000
/** How long shutdown waits for one handler's `close`. */
export const HANDLER_CLOSE_TIMEOUT_MS = 8_000

export const DROP_REASONS = ['saturated_qos0'] as const
export type DropReason = typeof DROP_REASONS[number]

export interface PipelineStats {
  pointsAccepted (count: number): void
  pointsRejected (reason: PointRejection, count: number): void
  payloadRejected (reason: PayloadRejection): void
  pointsDropped (reason: DropReason, count: number): void
  handlerRan (handler: string, seconds: number, failed: boolean): void
  handlerBatchDropped (handler: string): void
  /** A QoS 1 publish beyond the held-bytes cap: its connection was closed without acknowledging it. */
  overloadDisconnect (): void
}

export interface PipelineState {
  queuedPoints: number
  heldPublishes: number
  saturated: boolean
}

/** One `metrics` publish of a device. */
export interface MetricsPublish {
  serial: string
  payload: Buffer | string
  qos: number
  /** True once the device's connection is closed: a held publish of it is forgotten (never acknowledged, so it is sent again). */
  gone (): boolean
  /** Tells the device why points were dropped (its errors topic). */
  report (reason: string): void
  /** Closes the device's connection without acknowledging this publish, which the device sends again once reconnected. */
  disconnect (reason: string): void
}

export interface PipelineOptions {
  handlers: readonly MetricsHandler[]
  logger: Logger
  stats?: PipelineStats
  /** METRICS_MAX_AGE */
  maxAgeSeconds: number
  /** High-water mark of the queue (METRICS_QUEUE_POINTS); the low-water mark is half of it. */
  queuePoints: number
  maxBatchPoints?: number
  maxBatchDelayMs?: number
  backlogBatches?: number
  handlerTimeoutMs?: number
  handlerCloseTimeoutMs?: number
  now?: () => Date
}

interface Runner {
  handler: MetricsHandler
  lossy: boolean
  backlog: MetricBatch[]
  running: boolean
  /** Its call has outlived HANDLER_TIMEOUT_MS: it gets no batch until that call settles, and loses its oldest ones. */
  stalled: boolean
}

/** A held publish; `publish` is undefined for a QoS 0 publish whose points were dropped. */
interface Held { publish: MetricsPublish | undefined, bytes: number, done: () => void, gone: () => boolean }

/** Whether `work` settled within `ms` (its rejection, if first, is thrown). */
async function settlesWithin (work: Promise<unknown>, ms: number): Promise<boolean> {
  let deadline: NodeJS.Timeout | undefined
  try {
    return await Promise.race([work.then(() => true), new Promise<boolean>(resolve => { deadline = setTimeout(() => { resolve(false) }, ms) })])
  } finally {
    clearTimeout(deadline)
  }
}

const noStats: PipelineStats = {
  pointsAccepted () {}, pointsRejected () {}, payloadRejected () {}, pointsDropped () {}, handlerRan () {}, handlerBatchDropped () {}, overloadDisconnect () {}
}

export function createMetricsPipeline (options: PipelineOptions) {
  const { logger, maxAgeSeconds } = options
  const stats = options.stats ?? noStats
  const now = options.now ?? (() => new Date())
  const highWater = options.queuePoints
  const lowWater = Math.floor(highWater / 2)
  const maxBatchPoints = options.maxBatchPoints ?? MAX_BATCH_POINTS
  const maxBatchDelayMs = options.maxBatchDelayMs ?? MAX_BATCH_DELAY_MS
  const backlogBatches = options.backlogBatches ?? HANDLER_BACKLOG_BATCHES
  const handlerTimeoutMs = options.handlerTimeoutMs ?? HANDLER_TIMEOUT_MS
  const handlerCloseTimeoutMs = options.handlerCloseTimeoutMs ?? HANDLER_CLOSE_TIMEOUT_MS
  const runners: Runner[] = options.handlers.map(handler => ({ handler, lossy: handler.lossy === true, backlog: [], running: false, stalled: false }))

  const queue: Array<{ points: MetricPoint[], at: number }> = []
  let queued = 0
  const held: Held[] = []
  let heldBytes = 0
  let saturated = false
  let timer: NodeJS.Timeout | undefined
  let immediate: NodeJS.Immediate | undefined
  let closed = false
  let flushing = false
  let closing: Promise<void> | undefined
  let idleWaiters: Array<() => void> = []

  function enqueue (points: MetricPoint[]): void {
    queue.push({ points, at: Date.now() })
    queued += points.length
    stats.pointsAccepted(points.length)
    if (queued >= highWater) saturated = true
    if (queued >= maxBatchPoints) immediate ??= setImmediate(pump)
    else timer ??= setTimeout(pump, maxBatchDelayMs)
  }

  /** Hands held publishes to the queue, oldest first, until it is full again. */
  function release (): void {
    while (!saturated && held.length > 0) {
      const entry = held.shift()!
      heldBytes -= entry.bytes
      if (entry.gone()) continue
      if (entry.publish !== undefined) accept(entry.publish)
      entry.done()
    }
  }

  function takeBatch (): MetricPoint[] {
    const points: MetricPoint[] = []
    while (points.length < maxBatchPoints && queue.length > 0) {
      const chunk = queue[0]!
      const room = maxBatchPoints - points.length
      if (chunk.points.length <= room) {
        points.push(...chunk.points)
        queue.shift()
      } else {
        points.push(...chunk.points.slice(0, room))
        chunk.points = chunk.points.slice(room)
      }
    }
    queued -= points.length
    return points
  }

  const hasRoom = (): boolean => runners.every(r => r.lossy || r.stalled || r.backlog.length < backlogBatches)

  /** Cuts the batches that are due, while every non-lossy handler has room for one. */
  function pump (): void {
    clearTimeout(timer)
    timer = undefined
    if (immediate !== undefined) clearImmediate(immediate)
    immediate = undefined
    while (queued > 0 && hasRoom()) {
      const wait = queue[0]!.at + maxBatchDelayMs - Date.now()
      if (queued < maxBatchPoints && wait > 0 && !flushing) {
        timer = setTimeout(pump, wait)
        break
      }
      dispatch({ id: randomUUID(), points: Object.freeze(takeBatch()) })
    }
    if (saturated && queued <= lowWater) {
      saturated = false
      release()
    }
    checkIdle()
  }

  function dispatch (batch: MetricBatch): void {
    for (const runner of runners) {
      if (runner.backlog.length >= backlogBatches) { // only a lossy or stalled handler gets here
        runner.backlog.shift()
        stats.handlerBatchDropped(runner.handler.name)
      }
      runner.backlog.push(batch)
      run(runner)
    }
  }

  function run (runner: Runner): void {
    if (runner.running || runner.backlog.length === 0) return
    runner.running = true
    const batch = runner.backlog.shift()!
    const started = performance.now()
    const stall = setTimeout(() => {
      runner.stalled = true
      stats.handlerRan(runner.handler.name, handlerTimeoutMs / 1000, true)
      logger.error({ handler: runner.handler.name, batch: batch.id, timeout_ms: handlerTimeoutMs }, 'metrics handler did not answer in time; until it does, its batches are dropped so that it holds up no other')
      if (!runner.lossy && queued > 0) immediate ??= setImmediate(pump)
    }, handlerTimeoutMs)
    stall.unref()
    const finish = (failed: boolean, error?: unknown): void => {
      clearTimeout(stall)
      if (runner.stalled) {
        runner.stalled = false
        logger.warn({ handler: runner.handler.name, batch: batch.id, after_ms: Math.round(performance.now() - started), failed }, 'stalled metrics handler answered; it gets batches again')
      } else {
        stats.handlerRan(runner.handler.name, (performance.now() - started) / 1000, failed)
        if (failed) logger.error({ handler: runner.handler.name, batch: batch.id, points: batch.points.length, err: error }, 'metrics handler failed; its batch is lost for it')
      }
      runner.running = false
      run(runner)
      if (!runner.lossy && queued > 0) immediate ??= setImmediate(pump)
      checkIdle()
    }
    let result: Promise<void>
    try {
      result = Promise.resolve(runner.handler.handle(batch))
    } catch (error) {
      result = Promise.reject(error)
    }
    result.then(() => { finish(false) }, (error: unknown) => { finish(true, error) })
  }

  function isIdle (): boolean {
    return queued === 0 && runners.every(r => !r.running && r.backlog.length === 0)
  }

  function checkIdle (): void {
    if (idleWaiters.length === 0 || !isIdle()) return
    const waiters = idleWaiters
    idleWaiters = []
    for (const resolve of waiters) resolve()
  }

  /** Validates a publish (counting and reporting what is dropped); answers its valid points. */
  function validate (publish: MetricsPublish): MetricPoint[] {
    const parsed = parseMetricsPayload(publish.payload, publish.serial, { now: now(), maxAgeSeconds })
    const report = describeRejection(parsed)
    if (report !== undefined) publish.report(report)
    if (!parsed.ok) {
      stats.payloadRejected(parsed.reason)
      return []
    }
    const rejectedBy = new Map<PointRejection, number>()
    for (const { reason } of parsed.rejected) rejectedBy.set(reason, (rejectedBy.get(reason) ?? 0) + 1)
    for (const [reason, count] of rejectedBy) stats.pointsRejected(reason, count)
    return parsed.points
  }

  function accept (publish: MetricsPublish): void {
    const points = validate(publish)
    if (points.length > 0) enqueue(points)
  }

  function drop (publish: MetricsPublish, reason: DropReason, why: string): void {
    const points = validate(publish)
    if (points.length === 0) return
    stats.pointsDropped(reason, points.length)
    publish.report(`${points.length} points dropped: ${why}`)
  }

  /**
   * Takes one `metrics` publish and calls `done` once its valid points are queued: at once, unless
   * the pipeline is saturated (then `done` waits, and so does the device's connection).
   */
  function ingest (publish: MetricsPublish, done: () => void): void {
    if (closed) return done()
    if (!saturated) {
      accept(publish)
      return done()
    }
    const { gone } = publish
    if (publish.qos === 0) {
      drop(publish, 'saturated_qos0', 'the server is saturated and then queues no QoS 0 points; publish with QoS 1 to be slowed down instead')
      held.push({ publish: undefined, bytes: 0, done, gone })
      return
    }
    const bytes = Buffer.byteLength(publish.payload)
    if (heldBytes + bytes > MAX_HELD_BYTES) {
      // not acknowledged, so not lost: the device sends it again after reconnecting
      stats.overloadDisconnect()
      publish.disconnect('the server is overloaded: too many metrics publishes are waiting; the unacknowledged publish is to be sent again')
      return
    }
    held.push({ publish, bytes, done, gone })
    heldBytes += bytes
  }

  /** Flushes the queue to the handlers (at most FLUSH_TIMEOUT_MS), then closes them. Publishes still held are not acknowledged. */
  function close (timeoutMs = FLUSH_TIMEOUT_MS): Promise<void> {
    closing ??= (async () => {
      closed = true
      flushing = true
      held.length = 0
      heldBytes = 0
      pump()
      const flushed = await settlesWithin(new Promise<void>(resolve => { idleWaiters.push(resolve); checkIdle() }), timeoutMs)
      clearTimeout(timer)
      if (!flushed) {
        logger.warn({ queuedPoints: queued, backlogs: Object.fromEntries(runners.map(r => [r.handler.name, r.backlog.length])) }, 'metrics pipeline did not flush in time; the rest is lost')
      }
      await Promise.all(runners.map(async ({ handler }) => {
        try {
          if (!await settlesWithin(Promise.resolve(handler.close?.()), handlerCloseTimeoutMs)) {
            logger.error({ handler: handler.name, timeout_ms: handlerCloseTimeoutMs }, 'metrics handler did not close in time')
          }
        } catch (error) {
          logger.error({ handler: handler.name, err: error }, 'metrics handler failed to close')
        }
      }))
    })()
    return closing
  }

  function state (): PipelineState {
    return { queuedPoints: queued, heldPublishes: held.length, saturated }
  }

  return { ingest, close, state }
}

export type MetricsPipeline = ReturnType<typeof createMetricsPipeline>
