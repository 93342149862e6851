// knex implementation of metric storage: idempotent batch inserts (metric_points and metric_batches
// in one statement), the keyset-paged history query, latest values, and retention.
// Every statement runs unchanged on PostgreSQL 15 and on PGlite.
import type { Knex } from 'knex'
import type { MetricBatch } from '../../metrics/types.js'

export interface StoredPoint {
  id: string
  name: string
  value: number
  unit: string | null
  recorded_at: Date
  received_at: Date
  /** recorded_at in microseconds since the epoch (exact, for the cursor). */
  recorded_us: string
}

export interface PointQuery {
  serial: string
  name?: string
  since?: Date
  until?: Date
  /** Keyset position: rows strictly older than this (recorded_at µs, id). */
  before?: { recordedUs: string, id: string }
  limit: number
}

export interface LatestMetric { value: number, unit: string | null, recorded_at: Date }

export interface MetricsRepository {
  /** Stores the batches whose ids were not stored before; answers how many were new. */
  storeBatches (batches: readonly MetricBatch[]): Promise<number>
  listPoints (query: PointQuery): Promise<StoredPoint[]>
  latest (serial: string): Promise<Record<string, LatestMetric>>
  /** Deletes at most `limit` points recorded before `cutoff`; answers how many. */
  prunePoints (cutoff: Date, limit: number): Promise<number>
  /** Deletes at most `limit` batch ids stored before `cutoff`; answers how many. */
  pruneBatchIds (cutoff: Date, limit: number): Promise<number>
}

// One statement, so it is atomic without an explicit transaction (one round trip, and PGlite's
// single connection is held once): the batch ids that are new decide which points go in. Times
// travel as unix milliseconds: cheaper to send and to convert than timestamp text.
const STORE_SQL = `
WITH batch AS (
  SELECT * FROM unnest(?::uuid[]) WITH ORDINALITY AS b (id, n)
), new_batch AS (
  INSERT INTO metric_batches (id) SELECT id FROM batch ON CONFLICT (id) DO NOTHING RETURNING id
), point AS (
  SELECT p.* FROM unnest(?::int[], ?::text[], ?::text[], ?::float8[], ?::text[], ?::float8[], ?::float8[])
    AS p (n, serial, name, value, unit, recorded_ms, received_ms)
  WHERE p.n IN (SELECT batch.n FROM batch JOIN new_batch USING (id))
), stored AS (
  INSERT INTO metric_points (serial, name, value, unit, recorded_at, received_at)
  SELECT serial, name, value, unit, to_timestamp(recorded_ms / 1000), to_timestamp(received_ms / 1000) FROM point
)
SELECT count(*)::int AS stored FROM new_batch`

// The distinct names of device ? from the (serial, name, recorded_at, id) index: a recursive
// "loose index scan" (one index probe per name; PostgreSQL has no skip scan). Ends with a NULL row.
const NAMES_CTE = `
WITH RECURSIVE names AS (
  (SELECT name FROM metric_points WHERE serial = ? ORDER BY name LIMIT 1)
  UNION ALL
  SELECT (SELECT p.name FROM metric_points p WHERE p.serial = ? AND p.name > names.name ORDER BY p.name LIMIT 1)
  FROM names WHERE names.name IS NOT NULL
)`

// A device's newest point per name.
const LATEST_SQL = `${NAMES_CTE}
SELECT newest.* FROM names CROSS JOIN LATERAL (
  SELECT p.name, p.value, p.unit, p.recorded_at FROM metric_points p
  WHERE p.serial = ? AND p.name = names.name ORDER BY p.recorded_at DESC, p.id DESC LIMIT 1
) newest ORDER BY newest.name`

/** The array literal of finite numbers, as pg would send it but without quoting and escaping each element. */
const numbers = (values: readonly number[]): string => `{${values.join(',')}}`

export function createMetricsRepository (knex: Knex): MetricsRepository {
  return {
    async storeBatches (batches) {
      if (batches.length === 0) return 0
      const n: number[] = []
      const serial: string[] = []
      const name: string[] = []
      const value: number[] = []
      const unit: Array<string | null> = []
      const recordedMs: number[] = []
      const receivedMs: number[] = []
      batches.forEach((batch, i) => {
        for (const point of batch.points) {
          n.push(i + 1)
          serial.push(point.serial)
          name.push(point.name)
          value.push(point.value)
          unit.push(point.unit)
          recordedMs.push(point.recordedAt.getTime())
          receivedMs.push(point.receivedAt.getTime())
        }
      })
      // knex's binding types do not admit arrays with nulls; pg and PGlite send them as array literals
      const bindings = [batches.map(batch => batch.id), numbers(n), serial, name, numbers(value), unit, numbers(recordedMs), numbers(receivedMs)] as unknown as Knex.RawBinding[]
      const result = await knex.raw(STORE_SQL, bindings) as { rows: Array<{ stored: number }> }
      return result.rows[0]!.stored
    },

    async listPoints ({ serial, name, since, until, before, limit }) {
      const pageQuery = (query: Knex.QueryBuilder): Knex.QueryBuilder => {
        query.from('metric_points')
          .where({ serial })
          .orderBy([{ column: 'recorded_at', order: 'desc' }, { column: 'id', order: 'desc' }])
          .limit(limit)
          .select('id', 'name', 'value', 'unit', 'recorded_at', 'received_at',
            knex.raw("(extract(epoch from recorded_at) * 1000000)::bigint::text AS recorded_us"))
        if (since !== undefined) query.where('recorded_at', '>=', since)
        if (until !== undefined) query.where('recorded_at', '<=', until)
        if (before !== undefined) {
          query.whereRaw("(recorded_at, id) < (timestamptz 'epoch' + ?::bigint * interval '1 microsecond', ?::bigint)", [before.recordedUs, before.id])
        }
        return query
      }
      // Without a name, the newest `limit` of each name, merged: the one index serves both.
      const rows = name !== undefined
        ? await pageQuery(knex.queryBuilder()).where({ name }) as StoredPoint[]
        : (await knex.raw(`${NAMES_CTE} SELECT page.* FROM names CROSS JOIN LATERAL ? page ORDER BY page.recorded_at DESC, page.id DESC LIMIT ?`,
            [serial, serial, pageQuery(knex.queryBuilder()).whereRaw('name = names.name'), limit]) as { rows: StoredPoint[] }).rows
      return rows.map(row => ({ ...row, id: String(row.id), value: Number(row.value) }))
    },

    async latest (serial) {
      const { rows } = await knex.raw(LATEST_SQL, [serial, serial, serial]) as { rows: Array<LatestMetric & { name: string }> }
      return Object.fromEntries(rows.map(({ name, ...latest }) => [name, { ...latest, value: Number(latest.value) }]))
    },

    async prunePoints (cutoff, limit) {
      // by ctid: metric_points has no index on id (see the lean-indexes migration)
      const result = await knex.raw(`WITH doomed AS (
          DELETE FROM metric_points WHERE ctid = ANY (ARRAY(SELECT ctid FROM metric_points WHERE recorded_at < ? LIMIT ?)) RETURNING 1
        ) SELECT count(*)::int AS deleted FROM doomed`, [cutoff, limit]) as { rows: Array<{ deleted: number }> }
      return result.rows[0]!.deleted
    },

    async pruneBatchIds (cutoff, limit) {
      const result = await knex.raw(`WITH doomed AS (
          DELETE FROM metric_batches WHERE id IN (SELECT id FROM metric_batches WHERE stored_at < ? LIMIT ?) RETURNING 1
        ) SELECT count(*)::int AS deleted FROM doomed`, [cutoff, limit]) as { rows: Array<{ deleted: number }> }
      return result.rows[0]!.deleted
    }
  }
}
