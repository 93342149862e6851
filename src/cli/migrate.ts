// `shepherd migrate`: apply pending migrations to the configured database.
import { loadConfig } from '../config.js'
import { openDatabase } from '../storage/db.js'
import { migrateLatest } from '../storage/migrate.js'
import { parseCommand, type Output } from './main.js'

export async function migrate (args: string[], output: Output): Promise<void> {
  parseCommand(args, {})
  const config = loadConfig()
  const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir })
  try {
    const applied = await migrateLatest(db.knex)
    output.out(applied.length === 0 ? 'database is up to date' : `applied ${applied.length} migration(s):\n  ${applied.join('\n  ')}`)
  } finally {
    await db.close()
  }
}
