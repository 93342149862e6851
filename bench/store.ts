// Metric insert benchmark (prints figures; not a test):
//   node --import tsx bench/store.ts [--statements N] [--points P] [--rounds R]
// Workload: the postgres handler's insert statement alone, no broker: N statements (default 40) of
// about P points each (default 5,000, the handler's statement size), made of batches of 10 points (one
// device message: 2,000 devices × 10 names), through the metrics repository on a fresh, migrated
// PostgreSQL database. Baseline in the same run, on the same rows: a plain
// `INSERT … SELECT FROM unnest(…)` into a table of the same columns with no index and no batch
// ids (the database's insert floor). The two alternate R times (default 3); printed: rows/s, and
// CPU µs per row of this process (encoding, sockets) and of PostgreSQL.
import { randomUUID } from 'node:crypto'
import { parseArgs } from 'node:util'
import { openDatabase } from '../src/storage/db.js'
import { migrateLatest } from '../src/storage/migrate.js'
import { createMetricsRepository } from '../src/storage/repos/metrics-repo.js'
import type { MetricBatch, MetricPoint } from '../src/metrics/types.js'
import { createThrowawayDatabase, loadAverage, machineDescription, startPostgresCpu } from './lib/environment.js'
import { thousands } from './lib/figures.js'
import { optionChecks, type OptionChecks } from './lib/options.js'
import { guardRun } from './lib/run-guard.js'

const checks: OptionChecks = optionChecks('node --import tsx bench/store.ts [--statements 1..1000] [--points 10..100000] [--rounds 1..20] [--timeout SECONDS]')
const { values } = parseArgs({
  options: { statements: { type: 'string', default: '40' }, points: { type: 'string', default: '5000' }, rounds: { type: 'string', default: '3' }, timeout: { type: 'string', default: '600' } }
})
const statements = checks.integer('statements', values.statements, 1000)
const pointsPerStatement = checks.integer('points', values.points, 100_000, 10)
const rounds = checks.integer('rounds', values.rounds, 20)
const timeoutSeconds = checks.integer('timeout', values.timeout, 86_400)

const POINTS_PER_MESSAGE = 10
const DEVICES = 2000

function makeStatement (index: number): MetricBatch[] {
  const now = Date.now()
  return Array.from({ length: Math.ceil(pointsPerStatement / POINTS_PER_MESSAGE) }, (_, b): MetricBatch => {
    const serial = `bench-${String((index * pointsPerStatement / POINTS_PER_MESSAGE + b) % DEVICES).padStart(5, '0')}`
    const points = Array.from({ length: POINTS_PER_MESSAGE }, (_, i): MetricPoint => ({
      serial, name: `metric_${i}`, value: Math.random() * 100, unit: i % 2 === 0 ? '%' : null, recordedAt: new Date(now - 1000 + index), receivedAt: new Date(now)
    }))
    return { id: randomUUID(), points }
  })
}

const FLOOR_SQL = `INSERT INTO bench_floor (serial, name, value, unit, recorded_at, received_at)
  SELECT serial, name, value, unit, to_timestamp(recorded_ms / 1000), to_timestamp(received_ms / 1000)
  FROM unnest(?::text[], ?::text[], ?::float8[], ?::text[], ?::float8[], ?::float8[]) AS p (serial, name, value, unit, recorded_ms, received_ms)`

const results: Array<{ kind: string, rowsPerSecond: number, nodeMicros: number, postgresMicros: number }> = []
const report = (): void => {
  for (const kind of ['shepherd', 'baseline']) {
    const runs = results.filter(r => r.kind === kind)
    if (runs.length === 0) continue
    const list = (f: (r: typeof runs[number]) => string): string => runs.map(f).join(', ')
    console.log(`${kind.padEnd(9)} rows/s ${list(r => thousands(r.rowsPerSecond))}; CPU µs/row this process ${list(r => r.nodeMicros.toFixed(2))}, PostgreSQL ${list(r => r.postgresMicros.toFixed(2))}`)
  }
}
let cleanUp = async (): Promise<void> => {}
const guard = guardRun({ timeoutSeconds, reportPartial: () => { report(); return results.length > 0 }, cleanUp: () => cleanUp() })

console.log('Shepherd metric insert benchmark')
console.log(`workload: ${statements} statements × ${thousands(pointsPerStatement)} points (batches of ${POINTS_PER_MESSAGE}, ${DEVICES} devices) through the metrics repository ` +
  `(shepherd) vs a plain unnest insert into an unindexed table of the same columns (baseline), alternated ${rounds} times, on a fresh PostgreSQL database (127.0.0.1:5432)`)
console.log(`machine: ${machineDescription()}; load average at the start: ${loadAverage()}`)

guard.phase = 'creating the PostgreSQL database'
const database = await createThrowawayDatabase()
const db = await openDatabase({ databaseUrl: database.url, dataDir: '.' })
cleanUp = async () => { await db.close(); await database.drop() }
await guard.run(async () => {
  await migrateLatest(db.knex)
  await db.knex.raw('CREATE TABLE bench_floor (serial text, name text, value float8, unit text, recorded_at timestamptz, received_at timestamptz)')
  const repo = createMetricsRepository(db.knex)
  const floor = async (batches: readonly MetricBatch[]): Promise<void> => {
    const points = batches.flatMap(batch => batch.points)
    await db.knex.raw(FLOOR_SQL, [points.map(p => p.serial), points.map(p => p.name), points.map(p => p.value), points.map(p => p.unit),
      points.map(p => p.recordedAt.getTime()), points.map(p => p.receivedAt.getTime())] as never)
  }
  const contenders = { shepherd: async (batches: readonly MetricBatch[]) => { await repo.storeBatches(batches) }, baseline: floor }
  for (const store of Object.values(contenders)) await store(makeStatement(-1)) // warm-up: plans, connections
  for (let round = 1; round <= rounds; round++) {
    for (const [kind, store] of Object.entries(contenders)) {
      guard.phase = `round ${round}: ${kind}`
      const work = Array.from({ length: statements }, (_, i) => makeStatement(round * statements + i))
      const postgresCpu = startPostgresCpu()
      const cpuBefore = process.cpuUsage()
      const started = performance.now()
      for (const batches of work) await store(batches)
      const elapsedMs = performance.now() - started
      const cpu = process.cpuUsage(cpuBefore)
      const rows = work.reduce((sum, batches) => sum + batches.reduce((n, batch) => n + batch.points.length, 0), 0)
      results.push({ kind, rowsPerSecond: rows / elapsedMs * 1000, nodeMicros: (cpu.user + cpu.system) / rows, postgresMicros: postgresCpu() / rows })
    }
  }
  report()
})
