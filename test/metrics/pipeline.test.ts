// src/metrics/pipeline.ts without a server: batching by size and time, per-handler backlogs (lossy
// handlers drop their oldest batch), holding publishes while saturated, the held-bytes cap,
// publishes of closed connections, and the flush on close.
import t from 'tap'
import { createLogger } from '../../src/logger.js'
import { createMetricsPipeline, type DropReason, type MetricsPublish, type PipelineOptions } from '../../src/metrics/pipeline.js'
import type { MetricBatch, MetricsHandler } from '../../src/metrics/types.js'

const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

/** Waits for `check` to hold (a loaded machine delays the handlers' turns), failing after 5 s. */
async function until (check: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 5000
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await sleep(5)
  }
}

function handler (name: string, options: { lossy?: boolean, gate?: Promise<void>, delayMs?: number } = {}): MetricsHandler & { batches: MetricBatch[], closed: boolean } {
  const self = {
    name,
    lossy: options.lossy,
    batches: [] as MetricBatch[],
    closed: false,
    async handle (batch: MetricBatch) {
      await options.gate
      if (options.delayMs !== undefined) await sleep(options.delayMs)
      self.batches.push(batch)
    },
    async close () { self.closed = true }
  }
  return self
}

function stats () {
  const counts = { accepted: 0, dropped: {} as Partial<Record<DropReason, number>>, handlerDropped: {} as Record<string, number>, overloadDisconnects: 0 }
  return {
    counts,
    stats: {
      pointsAccepted: (n: number) => { counts.accepted += n },
      pointsRejected () {},
      payloadRejected () {},
      pointsDropped: (reason: DropReason, n: number) => { counts.dropped[reason] = (counts.dropped[reason] ?? 0) + n },
      handlerRan () {},
      handlerBatchDropped: (name: string) => { counts.handlerDropped[name] = (counts.handlerDropped[name] ?? 0) + 1 },
      overloadDisconnect: () => { counts.overloadDisconnects += 1 }
    }
  }
}

function publish (points: number, qos = 1, extra: Partial<MetricsPublish> = {}): MetricsPublish & { reports: string[], disconnected: string[] } {
  const reports: string[] = []
  const disconnected: string[] = []
  const recorded_at = Math.floor(Date.now() / 1000)
  return {
    serial: 'dev',
    payload: JSON.stringify({ metrics: Array.from({ length: points }, (_, i) => ({ name: 'n', value: i, recorded_at })) }),
    qos,
    gone: () => false,
    report: (reason) => { reports.push(reason) },
    disconnect: (reason) => { disconnected.push(reason) },
    reports,
    disconnected,
    ...extra
  }
}

const base = (handlers: MetricsHandler[], more: Partial<PipelineOptions> = {}): PipelineOptions =>
  ({ handlers, logger: createLogger('silent'), maxAgeSeconds: 3600, queuePoints: 1000, ...more })

t.test('batches by size at once, and by time after the window', async (t) => {
  const h = handler('h')
  const pipeline = createMetricsPipeline(base([h], { maxBatchPoints: 100, maxBatchDelayMs: 200 }))
  let acked = 0
  pipeline.ingest(publish(250), () => { acked++ })
  t.equal(acked, 1, 'acknowledged at once (not saturated)')
  await until(() => h.batches.length === 2, 'two full batches')
  t.same(h.batches.map(b => b.points.length), [100, 100], 'full batches leave at once')
  t.equal(pipeline.state().queuedPoints, 50)
  await until(() => h.batches.length === 3, 'the rest after the window')
  t.same(h.batches.map(b => b.points.length), [100, 100, 50], 'the rest after the window')
  t.ok(Object.isFrozen(h.batches[0]!.points), 'batches are frozen: handlers share them')
  await pipeline.close()
  t.ok(h.closed)
})

t.test('a full lossy backlog drops its oldest batch; the other handlers get everything', async (t) => {
  let open!: () => void
  const gate = new Promise<void>(resolve => { open = resolve })
  const lossy = handler('lossy', { lossy: true, gate })
  const steady = handler('steady')
  const { counts, stats: s } = stats()
  const pipeline = createMetricsPipeline(base([lossy, steady], { maxBatchPoints: 10, backlogBatches: 2, stats: s }))
  for (let i = 0; i < 6; i++) pipeline.ingest(publish(10), () => {})
  await until(() => steady.batches.length === 6, 'the steady handler to get all six batches')
  t.equal(steady.batches.length, 6, 'the steady handler got all six batches')
  open()
  await until(() => lossy.batches.length >= 3, 'the lossy handler to run its backlog')
  await sleep(20)
  // one batch was running when the backlog filled; of the five after it, the last two were kept
  t.equal(lossy.batches.length, 3, 'the lossy handler got the running batch and the two newest')
  t.same(lossy.batches.slice(1).map(b => b.id), steady.batches.slice(4).map(b => b.id))
  t.same(counts.handlerDropped, { lossy: 3 }, 'its drops counted')
  t.equal(pipeline.state().saturated, false, 'a lossy handler never saturates the pipeline')
  await pipeline.close()
})

t.test('while saturated, QoS 1 publishes are held in order; QoS 0 points are dropped; the held bytes are capped', async (t) => {
  let open!: () => void
  const gate = new Promise<void>(resolve => { open = resolve })
  const slow = handler('slow', { gate })
  const { counts, stats: s } = stats()
  const pipeline = createMetricsPipeline(base([slow], { maxBatchPoints: 500, backlogBatches: 1, stats: s }))
  const acks: string[] = []
  // 500 running + 500 in the backlog + 1000 queued: saturated
  for (const name of ['a', 'b', 'c', 'd']) {
    pipeline.ingest(publish(500), () => { acks.push(name) })
    await sleep(5)
  }
  t.same(pipeline.state(), { queuedPoints: 1000, heldPublishes: 0, saturated: true })
  const held = publish(500)
  pipeline.ingest(held, () => { acks.push('held') })
  const gone = publish(500, 1, { gone: () => true })
  pipeline.ingest(gone, () => { acks.push('gone') })
  const qos0 = publish(20, 0)
  pipeline.ingest(qos0, () => { acks.push('qos0') })
  t.same(acks, ['a', 'b', 'c', 'd'], 'held publishes are not acknowledged')
  t.equal(pipeline.state().heldPublishes, 3)
  t.same(counts.dropped, { saturated_qos0: 20 }, 'QoS 0 points dropped at once')
  t.match(qos0.reports, [/^20 points dropped: the server is saturated/])
  const huge = publish(1, 1, { payload: Buffer.alloc(17 * 1024 * 1024, ' ') })
  pipeline.ingest(huge, () => { acks.push('huge') })
  t.equal(acks.at(-1), 'd', 'beyond the held-bytes cap a QoS 1 publish is not acknowledged …')
  t.match(huge.disconnected, [/overloaded/], '… its connection is closed, for the device to send it again')
  t.equal(counts.overloadDisconnects, 1)

  open()
  await until(() => acks.length === 6, 'the held publishes released')
  t.same(acks, ['a', 'b', 'c', 'd', 'held', 'qos0'], 'released in order once drained; the closed connection\'s publish is forgotten')
  t.equal(counts.accepted, 2500, 'a, b, c, d and the held publish')
  await pipeline.close()
  t.equal(slow.batches.reduce((n, b) => n + b.points.length, 0), 2500, 'all flushed on close')
})

t.test('close waits for the flush at most its timeout, then closes the handlers', async (t) => {
  const stuck = handler('stuck', { gate: new Promise<void>(() => {}) })
  const logs: string[] = []
  const pipeline = createMetricsPipeline({ ...base([stuck]), logger: createLogger('warn', { write: (line: string) => { logs.push(line) } }) })
  pipeline.ingest(publish(10), () => {})
  const started = Date.now()
  await pipeline.close(100)
  t.ok(Date.now() - started < 1000)
  t.ok(stuck.closed)
  t.match(logs.join(''), /did not flush in time/)
  let acked = false
  pipeline.ingest(publish(1), () => { acked = true })
  t.ok(acked, 'after close a publish is acknowledged and ignored')
})

t.test('a handler that does not answer is stalled: the others get every batch, it loses its oldest, and it gets batches again once it answers', async (t) => {
  let answer!: () => void
  let calls = 0
  const hung: MetricsHandler & { batches: MetricBatch[] } = {
    name: 'hung',
    batches: [],
    async handle (batch) {
      calls += 1
      if (calls === 1) await new Promise<void>(resolve => { answer = resolve })
      hung.batches.push(batch)
    }
  }
  const steady = handler('steady')
  const { counts, stats: pipelineStats } = stats()
  const pipeline = createMetricsPipeline(base([hung, steady], { stats: pipelineStats, maxBatchPoints: 10, backlogBatches: 2, handlerTimeoutMs: 100 }))
  // far more than fits while the hung handler holds its backlog: without the stall, the queue would saturate and hold these
  let acked = 0
  for (let i = 0; i < 50; i++) pipeline.ingest(publish(10), () => { acked++ })
  await until(() => steady.batches.length === 50, 'the steady handler got every batch')
  t.equal(acked, 50, 'every publish acknowledged')
  t.equal(calls, 1, 'a stalled handler is not called again while its call is open')
  t.ok((counts.handlerDropped.hung ?? 0) >= 40, 'it lost its oldest batches')
  answer()
  await until(() => hung.batches.length === 3, 'the first batch and its backlog of 2 once it answered')
  for (let i = 0; i < 5; i++) pipeline.ingest(publish(10), () => {})
  await until(() => hung.batches.length === 8 && steady.batches.length === 55, 'batches for both again')
  await pipeline.close()
})

t.test('close gives each handler a bounded time to close', async (t) => {
  const neverCloses: MetricsHandler = { name: 'never', async handle () {}, close: () => new Promise<void>(() => {}) }
  const fine = handler('fine')
  const pipeline = createMetricsPipeline(base([neverCloses, fine], { handlerCloseTimeoutMs: 100 }))
  const started = Date.now()
  await pipeline.close()
  t.ok(Date.now() - started < 2000, 'close returns')
  t.ok(fine.closed)
})
