// Stored metric points (the `postgres` metrics handler): metric_points (history; a device's latest
// values are read from it too) and metric_batches (ids of stored batches, so a retried batch is
// stored once). No separate latest-values table: upserting it cost a third of the insert rate.
import type { Knex } from 'knex'

export async function up (knex: Knex): Promise<void> {
  await knex.raw(`CREATE TABLE metric_points (
    id bigserial PRIMARY KEY,
    serial text NOT NULL,
    name text NOT NULL,
    value double precision NOT NULL,
    unit text,
    recorded_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL)`)
  // One index per query shape of GET /api/devices/:serial/metrics (with and without `name`), both
  // ending in id for the keyset order; BRIN (tiny, cheap to keep up) lets retention find old rows.
  await knex.raw('CREATE INDEX metric_points_serial_name_time ON metric_points (serial, name, recorded_at, id)')
  await knex.raw('CREATE INDEX metric_points_serial_time ON metric_points (serial, recorded_at, id)')
  await knex.raw('CREATE INDEX metric_points_recorded_at_brin ON metric_points USING brin (recorded_at)')
  await knex.raw('CREATE TABLE metric_batches (id uuid PRIMARY KEY, stored_at timestamptz NOT NULL DEFAULT now())')
  await knex.raw('CREATE INDEX metric_batches_stored_at_brin ON metric_batches USING brin (stored_at)')
}

export async function down (knex: Knex): Promise<void> {
  await knex.raw('DROP TABLE metric_batches, metric_points')
}
