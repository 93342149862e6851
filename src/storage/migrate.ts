// Runs the migrations of migrations/ (knex's migrator with a static migration source).
import type { Knex } from 'knex'
import { migrations } from '../../migrations/index.js'

const source: Knex.MigrationSource<readonly [string, Knex.Migration]> = {
  getMigrations: async () => [...migrations],
  getMigrationName: ([name]) => name,
  getMigration: async ([, migration]) => migration
}

/** Applies pending migrations; answers the names of those it ran. */
export async function migrateLatest (knex: Knex): Promise<string[]> {
  const [, applied] = await knex.migrate.latest({ migrationSource: source }) as [number, string[]]
  return applied
}
