// metric_points keeps one B-tree: (serial, name, recorded_at, id), which every query uses (the
// history without `name` merges the device's names through it). The primary key and the
// (serial, recorded_at, id) index went: together they cost a third of the insert rate, and ids
// stay unique by their sequence. The BRIN index on recorded_at (retention) summarizes each block
// range as it fills (autosummarize), not only at the next vacuum: an unsummarized range matches
// every query, so retention would read all pages inserted since the last vacuum. serial and
// name compare bytewise (COLLATE "C"): under a linguistic default collation (en_US, ICU) the
// B-tree's text comparisons cost another 15-20 % of the insert rate, and no query needs one.
import type { Knex } from 'knex'

export async function up (knex: Knex): Promise<void> {
  await knex.raw('ALTER TABLE metric_points DROP CONSTRAINT metric_points_pkey')
  await knex.raw('DROP INDEX metric_points_serial_time')
  await knex.raw('ALTER TABLE metric_points ALTER COLUMN serial TYPE text COLLATE "C", ALTER COLUMN name TYPE text COLLATE "C"')
  await knex.raw('ALTER INDEX metric_points_recorded_at_brin SET (autosummarize = on)')
}

export async function down (knex: Knex): Promise<void> {
  await knex.raw('ALTER INDEX metric_points_recorded_at_brin RESET (autosummarize)')
  await knex.raw('ALTER TABLE metric_points ALTER COLUMN serial TYPE text COLLATE "default", ALTER COLUMN name TYPE text COLLATE "default"')
  await knex.raw('CREATE INDEX metric_points_serial_time ON metric_points (serial, recorded_at, id)')
  await knex.raw('ALTER TABLE metric_points ADD PRIMARY KEY (id)')
}
