// Where a CLI command that changes the database runs. The embedded database admits one process,
// so while a server runs on it the command asks that server over its control socket; on
// PostgreSQL, or with no server running, the command opens the database itself.
import type { Config } from '../config.js'
import { callControl, ControlBusy, ControlUnavailable, startControlSocket, unlessBusy, type ControlSocket } from '../control/control-socket.js'
import { CommandError, StartupError } from '../errors.js'
import { openDatabase, type Database } from '../storage/db.js'
import { migrateLatest } from '../storage/migrate.js'

/**
 * Runs `operation` on the running server (embedded database), else `direct` on the database, after
 * migrating it (`migrated`: the migrations just applied). Both must answer the same JSON-shaped result: over the socket, dates arrive as strings.
 * Working on the embedded database itself, the command holds DATA_DIR (a server starting meanwhile
 * waits for it) so that two processes never open the same database files.
 */
export async function viaServerOrDatabase<T> (config: Config, operation: string, input: Record<string, unknown>, direct: (db: Database, migrated: string[]) => Promise<T>): Promise<T> {
  if (config.databaseUrl !== undefined) return await onDatabase(config, direct)
  for (;;) {
    try {
      return await unlessBusy(() => callControl(config.dataDir, operation, input)) as T
    } catch (error) {
      if (error instanceof ControlBusy) throw new CommandError(`DATA_DIR=${config.dataDir} is held by another shepherd command; try again`)
      if (!(error instanceof ControlUnavailable)) throw new CommandError(`the running server refused: ${(error as Error).message}`)
    }
    let claim: ControlSocket
    try {
      claim = await startControlSocket(config.dataDir, { busy: true })
    } catch (error) {
      if (error instanceof StartupError) continue // a server started meanwhile: ask it
      throw error
    }
    try {
      return await onDatabase(config, direct)
    } finally {
      await claim.close()
    }
  }
}

async function onDatabase<T> (config: Config, direct: (db: Database, migrated: string[]) => Promise<T>): Promise<T> {
  const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir })
  try {
    return await direct(db, await migrateLatest(db.knex))
  } finally {
    await db.close()
  }
}
