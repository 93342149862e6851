// The postgres metrics handler against real databases: every point stored exactly once (also when
// a batch comes twice), a PostgreSQL outage in the middle of a burst (through a TCP proxy that is
// stopped and restarted: memory, then spill files, then drained), close() with the database down
// and the next start draining what it spilled, invalid batches, and retention.
import { randomUUID } from 'node:crypto'
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Registry } from 'prom-client'
import t, { type Test } from 'tap'
import { loadConfig } from '../../src/config.js'
import { ConfigError } from '../../src/errors.js'
import { createLogger } from '../../src/logger.js'
import { createPostgresHandler, type PostgresHandlerOptions } from '../../src/metrics/handlers/postgres.js'
import type { MetricBatch, MetricPoint } from '../../src/metrics/types.js'
import { openDatabase, type Database } from '../../src/storage/db.js'
import { migrateLatest } from '../../src/storage/migrate.js'
import { createMetricsRepository } from '../../src/storage/repos/metrics-repo.js'
import { DATABASES, createTestDatabase, eventually, type DatabaseChoice } from '../helpers/server.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'

const logger = createLogger('silent')

const START = Date.now()
let sequence = 0 // makes every recorded_at distinct, so counting distinct points finds duplicates
function batchOf (serial: string, count: number, { ageMs = 0, name = 'cpu_percent', unit = '%' as string | null } = {}): MetricBatch {
  const base = START - ageMs
  const points: MetricPoint[] = Array.from({ length: count }, () => {
    sequence += 1
    return { serial, name, value: sequence / 4, unit, recordedAt: new Date(base - sequence), receivedAt: new Date() }
  })
  return { id: randomUUID(), points }
}

async function openTestDatabase (t: Test, choice: DatabaseChoice, url?: string): Promise<Database> {
  let drop: (() => Promise<void>) | undefined
  if (choice === 'postgres' && url === undefined) {
    const created = await createTestDatabase()
    url = created.url
    drop = created.drop
  }
  const db = await openDatabase({ databaseUrl: url, dataDir: tmpdir(), inMemory: true })
  await migrateLatest(db.knex)
  t.teardown(async () => { await db.close(); await drop?.() })
  return db
}

async function tempDir (t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-metrics-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

async function handlerOn (db: Database, dataDir: string, options: PostgresHandlerOptions = {}) {
  const registry = new Registry()
  const handler = await createPostgresHandler({ logger, registry, knex: db.knex, dataDir }, options)
  return { handler, registry }
}

async function counts (db: Database): Promise<{ rows: number, distinct: number }> {
  const result = await db.knex.raw('SELECT count(*)::int AS rows, count(DISTINCT (serial, name, recorded_at))::int AS "distinct" FROM metric_points') as { rows: Array<{ rows: number, distinct: number }> }
  return result.rows[0]!
}

const spillFiles = async (dataDir: string): Promise<string[]> => await readdir(path.join(dataDir, 'metrics-spill')).catch(() => [])

async function metricValue (registry: Registry, name: string): Promise<number> {
  const metric = await registry.getSingleMetric(name)?.get()
  return metric?.values.reduce((sum, value) => sum + value.value, 0) ?? 0
}

for (const database of DATABASES) {
  t.test(`postgres handler on ${database}`, async (t) => {
    t.test('thousands of points from many batches are stored exactly once, with the latest values', async (t) => {
      const db = await openTestDatabase(t, database)
      const dataDir = await tempDir(t)
      const { handler, registry } = await handlerOn(db, dataDir, { maxStatementPoints: 1000 })
      const batches = Array.from({ length: 60 }, (_, i) => batchOf(`dev-${i % 7}`, 50 + i))
      const total = batches.reduce((sum, batch) => sum + batch.points.length, 0)
      for (const batch of batches) await handler.handle(batch)
      await handler.close()
      t.same(await counts(db), { rows: total, distinct: total }, `${total} points stored once`)
      t.equal(await metricValue(registry, 'shepherd_metrics_postgres_stored_batches_total'), 60)
      t.equal(await metricValue(registry, 'shepherd_metrics_postgres_buffered_points'), 0)

      const newest = batches.filter(batch => batch.points[0]!.serial === 'dev-3')
        .flatMap(batch => batch.points).sort((a, b) => b.recordedAt.getTime() - a.recordedAt.getTime())[0]!
      const latest = await createMetricsRepository(db.knex).latest('dev-3')
      t.same(Object.keys(latest), ['cpu_percent'])
      t.equal(latest.cpu_percent!.value, newest.value, 'latest is the newest recorded point, not the last stored')
      t.equal(new Date(latest.cpu_percent!.recorded_at).getTime(), newest.recordedAt.getTime())
      t.same(await spillFiles(dataDir), [], 'nothing spilled')
    })

    t.test('a batch handed twice is stored once', async (t) => {
      const db = await openTestDatabase(t, database)
      const { handler } = await handlerOn(db, await tempDir(t))
      const batch = batchOf('twice', 25)
      await handler.handle(batch)
      await handler.handle(batch) // coalesced into the same statement
      await eventually(async () => (await counts(db)).rows === 25, 5000, 'the first copy stored')
      await handler.handle(batch) // after it was stored
      await handler.handle(batchOf('twice', 5))
      await handler.close()
      t.same(await counts(db), { rows: 30, distinct: 30 })
    })

    t.test('a batch the database refuses as invalid is dropped, the others stored', async (t) => {
      const db = await openTestDatabase(t, database)
      const { handler, registry } = await handlerOn(db, await tempDir(t))
      await handler.handle(batchOf('bad', 10))
      await handler.handle(batchOf('bad', 3, { unit: 'nul\u0000' })) // PostgreSQL text cannot hold NUL
      await handler.handle(batchOf('bad', 10))
      await handler.close()
      t.equal((await counts(db)).rows, 20)
      t.equal(await metricValue(registry, 'shepherd_metrics_postgres_dropped_batches_total'), 1)
    })

    t.test('retention deletes old points in chunks, and with them stale latest values; 0 keeps all', async (t) => {
      const db = await openTestDatabase(t, database)
      const dataDir = await tempDir(t)
      const { handler: keeper } = await handlerOn(db, dataDir, { retentionDays: 0 })
      await keeper.handle(batchOf('old', 12_000, { ageMs: 40 * 86_400_000 })) // more than one prune chunk
      await keeper.handle(batchOf('mixed', 5, { ageMs: 40 * 86_400_000, name: 'temp' }))
      await keeper.handle(batchOf('mixed', 7))
      await keeper.close()
      await keeper.prune()
      t.equal((await counts(db)).rows, 12_012, 'retention 0 keeps everything')

      const { handler, registry } = await handlerOn(db, dataDir, { retentionDays: 30 })
      await handler.prune()
      await handler.close()
      t.equal((await counts(db)).rows, 7)
      t.equal(await metricValue(registry, 'shepherd_metrics_postgres_pruned_points_total'), 12_005)
      const repo = createMetricsRepository(db.knex)
      t.same(Object.keys(await repo.latest('mixed')), ['cpu_percent'], 'no latest value older than the retention')
      t.same(await repo.latest('old'), {})
    })
  })
}

t.test('a PostgreSQL outage in the middle of a burst: memory, then spill files, then every point once', async (t) => {
  const target = await createTestDatabase()
  t.teardown(() => target.drop())
  const proxy = await startTcpProxy(new URL(target.url))
  t.teardown(proxy.cut)
  const db = await openTestDatabase(t, 'postgres', proxy.url)
  const direct = await openTestDatabase(t, 'postgres', target.url)
  const dataDir = await tempDir(t)
  const { handler, registry } = await handlerOn(db, dataDir, { maxBufferedPoints: 2000, maxBackoffMs: 200, spillFileBytes: 16 * 1024 })

  let total = 0
  const burst = async (count: number): Promise<void> => {
    for (let i = 0; i < count; i++) {
      const batch = batchOf(`burst-${i % 20}`, 100)
      total += batch.points.length
      await handler.handle(batch)
      if (i % 10 === 0) await new Promise(resolve => setImmediate(resolve))
    }
  }
  await burst(30)
  await proxy.cut()
  await burst(100) // 10,000 points: 2,000 in memory, the rest on disk
  t.ok((await spillFiles(dataDir)).length > 1, 'spilled to more than one file')
  t.ok(await metricValue(registry, 'shepherd_metrics_postgres_spill_bytes') > 0)
  t.ok(await metricValue(registry, 'shepherd_metrics_postgres_spilled_batches_total') >= 80)
  t.ok(await metricValue(registry, 'shepherd_metrics_postgres_buffered_points') <= 2000, 'memory stays within its bound')
  await eventually(async () => await metricValue(registry, 'shepherd_metrics_postgres_insert_retries_total') > 0, 5000, 'a retry')

  await proxy.restore()
  await burst(30) // arriving while the spill drains
  await eventually(async () => (await counts(direct)).rows === total, 30_000, 'every point stored')
  await eventually(async () => (await spillFiles(dataDir)).length === 0, 5000, 'the spill directory empty')
  t.same(await counts(direct), { rows: total, distinct: total }, `${total} points, each once`)
  t.equal(await metricValue(registry, 'shepherd_metrics_postgres_spill_bytes'), 0)
  await handler.close()
})

t.test('while the database keeps up, handle() waits for inserts once maxPendingPoints wait; a stuck insert releases it', async (t) => {
  const target = await createTestDatabase()
  t.teardown(() => target.drop())
  const proxy = await startTcpProxy(new URL(target.url))
  t.teardown(proxy.cut)
  const db = await openTestDatabase(t, 'postgres', proxy.url)
  const dataDir = await tempDir(t)
  const { handler, registry } = await handlerOn(db, dataDir, { maxPendingPoints: 200, maxStatementPoints: 100, slowInsertMs: 300 })

  let peak = 0
  for (let i = 0; i < 40; i++) {
    await handler.handle(batchOf(`paced-${i % 4}`, 50))
    peak = Math.max(peak, await metricValue(registry, 'shepherd_metrics_postgres_buffered_points'))
  }
  t.ok(peak <= 250, `at most maxPendingPoints + one batch wait in memory (peak ${peak})`)

  await eventually(async () => await metricValue(registry, 'shepherd_metrics_postgres_buffered_points') === 0, 10_000, 'drained')
  proxy.freeze() // the next insert hangs: handle() must not wait for it longer than slowInsertMs
  const started = Date.now()
  for (let i = 0; i < 20; i++) await handler.handle(batchOf('stuck', 50))
  const waited = Date.now() - started
  t.ok(waited < 3000, `handle() took the batches while the insert hung (${waited} ms)`)
  t.ok(await metricValue(registry, 'shepherd_metrics_postgres_buffered_points') > 250, 'buffered beyond maxPendingPoints instead of waiting')
  proxy.thaw()
  await eventually(async () => (await counts(db)).rows === 3000, 10_000, 'every point stored')
  await handler.close()
  t.same(await counts(db), { rows: 3000, distinct: 3000 })
})

t.test('close() with the database down spills what it holds; the next start drains it', async (t) => {
  const target = await createTestDatabase()
  t.teardown(() => target.drop())
  const proxy = await startTcpProxy(new URL(target.url))
  t.teardown(proxy.cut)
  const db = await openTestDatabase(t, 'postgres', proxy.url)
  const dataDir = await tempDir(t)
  const { handler } = await handlerOn(db, dataDir, { maxBufferedPoints: 1000, maxBackoffMs: 100, closeTimeoutMs: 300 })
  await proxy.cut()
  const batches = Array.from({ length: 15 }, (_, i) => batchOf(`down-${i % 3}`, 100))
  for (const batch of batches) await handler.handle(batch)
  const started = Date.now()
  await handler.close()
  t.ok(Date.now() - started < 3000, 'close() does not wait for the database')
  const files = await spillFiles(dataDir)
  t.ok(files.length > 0, 'spill files written')
  const lines = (await Promise.all(files.map(file => readFile(path.join(dataDir, 'metrics-spill', file), 'utf8'))))
    .join('').split('\n').filter(line => line !== '')
  t.equal(lines.length, 15, 'one line per batch, every batch')
  await t.rejects(handler.handle(batchOf('late', 1)), /closed/, 'a closed handler takes nothing')

  const direct = await openTestDatabase(t, 'postgres', target.url)
  const { handler: next } = await handlerOn(direct, dataDir)
  await eventually(async () => (await counts(direct)).rows === 1500, 10_000, 'the spill drained')
  await eventually(async () => (await spillFiles(dataDir)).length === 0, 5000, 'the spill directory empty')
  await next.close()
  t.same(await counts(direct), { rows: 1500, distinct: 1500 })
})

t.test('a torn last line of a spill file is skipped, the rest stored', async (t) => {
  const db = await openTestDatabase(t, 'pglite')
  const dataDir = await tempDir(t)
  const { openSpillStore } = await import('../../src/metrics/spill.js')
  const spill = await openSpillStore(path.join(dataDir, 'metrics-spill'))
  await spill.append([batchOf('torn', 4), batchOf('torn', 6)])
  await spill.close()
  const [file] = await spillFiles(dataDir)
  const { appendFile } = await import('node:fs/promises')
  await appendFile(path.join(dataDir, 'metrics-spill', file!), '{"id":"abc","points":[["torn"')
  const { handler } = await handlerOn(db, dataDir)
  await eventually(async () => (await spillFiles(dataDir)).length === 0, 5000, 'the spill drained')
  await handler.close()
  t.equal((await counts(db)).rows, 10)
})

t.test('METRICS_RETENTION_DAYS: default 30, 0 allowed, anything else not an integer refused by name', async (t) => {
  t.equal(loadConfig({}).metricsRetentionDays, 30)
  t.equal(loadConfig({ METRICS_RETENTION_DAYS: '0' }).metricsRetentionDays, 0)
  t.equal(loadConfig({ METRICS_RETENTION_DAYS: '365' }).metricsRetentionDays, 365)
  for (const value of ['-1', '1.5', 'month']) {
    t.throws(() => loadConfig({ METRICS_RETENTION_DAYS: value }), ConfigError, value)
    t.throws(() => loadConfig({ METRICS_RETENTION_DAYS: value }), { message: /METRICS_RETENTION_DAYS must be an integer from 0/ }, value)
  }
})
