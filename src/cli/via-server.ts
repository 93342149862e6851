// Where a CLI command that changes the database runs. The embedded database admits one process,
// so while a server runs on it the command asks that server over its control socket; on
// PostgreSQL, or with no server running, the command opens the database itself.
import type { Config } from '../config.js'
import { callControl, ControlUnavailable } from '../control/control-socket.js'
import { CommandError } from '../errors.js'
import { openDatabase, type Database } from '../storage/db.js'
import { migrateLatest } from '../storage/migrate.js'

/**
 * Runs `operation` on the running server (embedded database), else `direct` on the migrated
 * database. Both must answer the same JSON-shaped result: over the socket, dates arrive as strings.
 */
export async function viaServerOrDatabase<T> (config: Config, operation: string, input: Record<string, unknown>, direct: (db: Database) => Promise<T>): Promise<T> {
  if (config.databaseUrl === undefined) {
    try {
      return await callControl(config.dataDir, operation, input) as T
    } catch (error) {
      if (!(error instanceof ControlUnavailable)) throw new CommandError(`the running server refused: ${(error as Error).message}`)
    }
  }
  const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir })
  try {
    await migrateLatest(db.knex)
    return await direct(db)
  } finally {
    await db.close()
  }
}
