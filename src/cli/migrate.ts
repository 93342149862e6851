// `shepherd migrate`: apply pending migrations to the configured database. A server running on the
// embedded database migrated it when it started, so there is nothing left to apply.
import { loadConfig } from '../config.js'
import { parseCommand, type Output } from './main.js'
import { viaServerOrDatabase } from './via-server.js'

export async function migrate (args: string[], output: Output): Promise<void> {
  parseCommand(args, {})
  const applied = await viaServerOrDatabase<string[]>(loadConfig(), 'migrate', {}, async (_db, migrated) => migrated)
  output.out(applied.length === 0 ? 'database is up to date' : `applied ${applied.length} migration(s):\n  ${applied.join('\n  ')}`)
}
