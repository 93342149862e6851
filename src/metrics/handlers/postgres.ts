// The `postgres` metrics handler: stores every point in metric_points exactly once. One writer
// loop inserts, coalescing queued batches into one statement, retries with exponential backoff
// while the database is away, and drains spill files (also those a previous run left) when it is
// back. Stored batch ids make a retry a no-op.
//
// While the database keeps up, `handle` queues a batch and, once `maxPendingPoints` are waiting,
// resolves only as inserts complete: the pipeline then saturates and slows the devices to the rate
// the database stores at, so latency stays bounded and nothing is spilled for mere load. While
// inserts fail, or one has run longer than `slowInsertMs`, `handle` takes every batch at once:
// into memory up to `maxBufferedPoints`, then into spill files under $DATA_DIR/metrics-spill/.
// Also prunes points older than METRICS_RETENTION_DAYS, in bounded chunks.
import path from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { Counter, Gauge, Histogram } from 'prom-client'
import { createMetricsRepository } from '../../storage/repos/metrics-repo.js'
import { openSpillStore } from '../spill.js'
import type { MetricBatch, MetricsHandler } from '../types.js'
import type { MetricsHandlerContext } from './context.js'

export interface PostgresHandlerOptions {
  /** Points older than this many days are deleted; 0 keeps them forever. Default 30. */
  retentionDays?: number
  /** Points held in memory before further batches go to spill files. Default 200,000. */
  maxBufferedPoints?: number
  /** Points queued while the database keeps up, before `handle` waits for inserts. Default 2 × maxStatementPoints. */
  maxPendingPoints?: number
  /** An insert running this long counts as database trouble: `handle` stops waiting for it. Default 5 s. */
  slowInsertMs?: number
  /** Points per INSERT statement when queued batches are coalesced (a larger batch goes alone). Default 5,000. */
  maxStatementPoints?: number
  /** Cap of the retry backoff. Default 5 s. */
  maxBackoffMs?: number
  /** How long close() tries to write what is in memory before spilling it. Default 5 s. */
  closeTimeoutMs?: number
  /** Interval of the retention pass. Default 1 h (the first pass runs a minute after start, or at this interval if shorter). */
  pruneIntervalMs?: number
  /** Size at which a spill file is rotated. Default 8 MiB. */
  spillFileBytes?: number
}

export interface PostgresHandler extends MetricsHandler {
  /** One retention pass now (also run periodically). */
  prune (): Promise<void>
  close (): Promise<void>
}

const PRUNE_CHUNK = 10_000
/** Stored batch ids are kept this long: a retry of a committed batch comes much sooner. */
const BATCH_ID_DAYS = 7
const DAY_MS = 86_400_000

/** SQLSTATE classes 22 (data exception) and 23 (integrity): the batch itself is at fault, retrying cannot help. */
const isDataError = (error: unknown): boolean => /^2[23]/.test(String((error as { code?: unknown } | null)?.code ?? ''))

const pointsOf = (batches: readonly MetricBatch[]): number => batches.reduce((sum, batch) => sum + batch.points.length, 0)

/** The leading batches of `batches` (from `start`) that fit in one statement; at least one. */
function chunkOf (batches: readonly MetricBatch[], start: number, maxPoints: number): MetricBatch[] {
  let end = start
  let points = 0
  while (end < batches.length && (end === start || points + batches[end]!.points.length <= maxPoints)) {
    points += batches[end]!.points.length
    end += 1
  }
  return batches.slice(start, end)
}

export async function createPostgresHandler (context: MetricsHandlerContext, options: PostgresHandlerOptions = {}): Promise<PostgresHandler> {
  const retentionDays = options.retentionDays ?? 30
  const maxBufferedPoints = options.maxBufferedPoints ?? 200_000
  const maxStatementPoints = options.maxStatementPoints ?? 5_000
  const maxPendingPoints = options.maxPendingPoints ?? 2 * maxStatementPoints
  const slowInsertMs = options.slowInsertMs ?? 5000
  const maxBackoffMs = options.maxBackoffMs ?? 5000
  const closeTimeoutMs = options.closeTimeoutMs ?? 5000
  const pruneIntervalMs = options.pruneIntervalMs ?? 3_600_000
  const logger = context.logger.child({ handler: 'postgres' })
  const repo = createMetricsRepository(context.knex)
  const spill = await openSpillStore(path.join(context.dataDir, 'metrics-spill'), { maxFileBytes: options.spillFileBytes })
  if (spill.pending) logger.info({ bytes: spill.bytes }, 'metric batches spilled by a previous run will be stored')

  const queue: MetricBatch[] = []
  let queuedPoints = 0
  let closing = false // close() began: memory takes no more batches, spill files wait for the next start
  let closed = false
  const stop = new AbortController() // ends the writer loop, and its backoff sleep at once
  let wake: (() => void) | undefined
  let spilling = false
  let failingSince: number | undefined
  let insertStartedAt: number | undefined
  let progressed!: Promise<void> // settles when an insert ends, either way
  let signalProgress!: () => void
  const nextProgress = (): void => { progressed = new Promise(resolve => { signalProgress = () => { nextProgress(); resolve() } }) }
  nextProgress()

  const registers = [context.registry]
  new Gauge({ name: 'shepherd_metrics_postgres_buffered_points', help: 'Metric points waiting in memory to be stored', registers, collect () { this.set(queuedPoints) } }) // eslint-disable-line no-new
  new Gauge({ name: 'shepherd_metrics_postgres_spill_bytes', help: 'Bytes of metric batches waiting in spill files', registers, collect () { this.set(spill.bytes) } }) // eslint-disable-line no-new
  const spilledBatches = new Counter({ name: 'shepherd_metrics_postgres_spilled_batches_total', help: 'Metric batches written to spill files', registers })
  const storedBatches = new Counter({ name: 'shepherd_metrics_postgres_stored_batches_total', help: 'Metric batches stored (not counting repeats of stored ones)', registers })
  const droppedBatches = new Counter({ name: 'shepherd_metrics_postgres_dropped_batches_total', help: 'Metric batches the database refused as invalid', registers })
  const retries = new Counter({ name: 'shepherd_metrics_postgres_insert_retries_total', help: 'Failed metric inserts that were retried', registers })
  const prunedPoints = new Counter({ name: 'shepherd_metrics_postgres_pruned_points_total', help: 'Metric points deleted by retention', registers })
  const insertDuration = new Histogram({
    name: 'shepherd_metrics_postgres_insert_duration_seconds', help: 'Duration of successful metric inserts', registers,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
  })

  /** Stores batches, retrying until it works; false when the handler stopped first. */
  async function store (batches: MetricBatch[]): Promise<boolean> {
    for (let attempt = 0; ; attempt++) {
      const end = insertDuration.startTimer()
      insertStartedAt = Date.now()
      try {
        storedBatches.inc(await repo.storeBatches(batches).finally(() => { insertStartedAt = undefined; signalProgress() }))
        end()
        if (failingSince !== undefined) {
          logger.info({ outage_ms: Date.now() - failingSince }, 'metrics database reachable again')
          failingSince = undefined
        }
        return true
      } catch (error) {
        if (isDataError(error)) {
          if (batches.length > 1) { // find the culprit
            for (const batch of batches) if (!await store([batch])) return false
            return true
          }
          droppedBatches.inc()
          logger.error({ err: error, batch: batches[0]!.id }, 'database refused a metric batch as invalid; dropped')
          return true
        }
        if (failingSince === undefined) {
          failingSince = Date.now()
          logger.warn({ err: error }, 'storing metrics failed; retrying with backoff, batches kept in memory and then on disk')
        }
        retries.inc()
        try {
          await sleep(Math.min(maxBackoffMs, 100 * 2 ** attempt), undefined, { signal: stop.signal })
        } catch {
          return false
        }
      }
    }
  }

  let draining: { file: string, batches: MetricBatch[], next: number } | undefined

  /** Stores one statement's worth of the oldest spill file; false when the handler stopped first. */
  async function drainSpill (): Promise<boolean> {
    if (draining === undefined) {
      const file = await spill.oldest()
      if (file === undefined) return true
      const { batches, skipped } = await spill.read(file)
      if (skipped > 0) logger.warn({ file, skipped }, 'unreadable lines in a metrics spill file skipped (a write torn by a crash)')
      draining = { file, batches, next: 0 }
    }
    const chunk = chunkOf(draining.batches, draining.next, maxStatementPoints)
    if (chunk.length > 0) {
      if (!await store(chunk)) return false
      draining.next += chunk.length
    }
    if (draining.next >= draining.batches.length) {
      await spill.remove(draining.file)
      draining = undefined
      if (!spill.pending) logger.info('metrics spill files drained')
    }
    return true
  }

  async function runWriter (): Promise<void> {
    let spillTurn = false // alternate with the spill, so a steady stream of new batches cannot starve it
    while (!stop.signal.aborted) {
      try {
        const drainable = spill.pending && !closing
        if (queue.length > 0 && !(spillTurn && drainable)) {
          const chunk = chunkOf(queue, 0, maxStatementPoints)
          if (!await store(chunk) || stop.signal.aborted) return // still queued: close() spills it
          queue.splice(0, chunk.length)
          queuedPoints -= pointsOf(chunk)
          spillTurn = true
        } else if (drainable) {
          spillTurn = false
          if (!await drainSpill()) return
        } else {
          await new Promise<void>(resolve => { wake = resolve })
          wake = undefined
        }
      } catch (error) { // the spill directory failed (disk full, permissions); batches stay where they are
        logger.error({ err: error }, 'metrics spill failed')
        await sleep(maxBackoffMs, undefined, { signal: stop.signal }).catch(() => {})
      }
    }
  }
  const writer = runWriter()

  async function pruneOlderThan (days: number, prune: (cutoff: Date, limit: number) => Promise<number>): Promise<number> {
    const cutoff = new Date(Date.now() - days * DAY_MS)
    let total = 0
    for (;;) {
      const deleted = await prune(cutoff, PRUNE_CHUNK)
      total += deleted
      if (deleted < PRUNE_CHUNK || stop.signal.aborted) return total
    }
  }

  async function prune (): Promise<void> {
    if (retentionDays > 0) {
      const deleted = await pruneOlderThan(retentionDays, repo.prunePoints)
      prunedPoints.inc(deleted)
      if (deleted > 0) logger.info({ points: deleted, retention_days: retentionDays }, 'old metric points deleted')
    }
    await pruneOlderThan(BATCH_ID_DAYS, repo.pruneBatchIds)
  }
  const runPrune = (): void => { prune().catch((error: unknown) => { logger.warn({ err: error }, 'metrics retention pass failed') }) }
  const firstPrune = setTimeout(runPrune, Math.min(60_000, pruneIntervalMs))
  const pruner = setInterval(runPrune, pruneIntervalMs)
  firstPrune.unref()
  pruner.unref()

  /** Waits while the pending points are over their bound and the database, healthy, works on them. */
  async function untilDatabaseCatchesUp (): Promise<void> {
    while (queuedPoints >= maxPendingPoints && failingSince === undefined && !closing) {
      const runningFor = insertStartedAt === undefined ? 0 : Date.now() - insertStartedAt
      if (runningFor >= slowInsertMs) return
      await Promise.race([progressed, sleep(slowInsertMs - runningFor, undefined, { ref: false })])
    }
  }

  return {
    name: 'postgres',
    prune,

    async handle (batch) {
      if (closed) throw new Error('the postgres metrics handler is closed')
      if (batch.points.length === 0) return
      await untilDatabaseCatchesUp()
      if (!closing && queuedPoints + batch.points.length <= maxBufferedPoints) {
        queue.push(batch)
        queuedPoints += batch.points.length
        spilling = false
      } else {
        if (!spilling && !closing) logger.warn({ buffered_points: queuedPoints }, 'metrics memory bound reached; spilling batches to disk')
        spilling = true
        await spill.append([batch])
        spilledBatches.inc()
      }
      wake?.()
    },

    async close () {
      if (closing) return
      closing = true
      clearTimeout(firstPrune)
      clearInterval(pruner)
      wake?.()
      const deadline = Date.now() + closeTimeoutMs
      while (queue.length > 0 && Date.now() < deadline && failingSince === undefined) await sleep(10)
      stop.abort()
      wake?.()
      // An insert still under way is not waited for beyond a moment: its batches are spilled
      // too, and if it commits after all, draining them next start is a no-op.
      await Promise.race([writer, sleep(1000)])
      if (queue.length > 0) {
        logger.warn({ batches: queue.length, points: queuedPoints }, 'metric batches not yet stored are spilled to disk for the next start')
        spilledBatches.inc(queue.length)
        await spill.append(queue.splice(0))
        queuedPoints = 0
      }
      await spill.close()
      closed = true
    }
  }
}
