// `shepherd revoke SERIAL`. On PostgreSQL the row is updated and NOTIFY tells every running node
// to disconnect the device. On the embedded database a running server is asked over its control
// socket (PGlite admits one process); with no server running, the database is updated directly.
import { CommandError, UsageError } from '../errors.js'
import { loadConfig } from '../config.js'
import { createDeviceRepository } from '../storage/repos/devices-repo.js'
import { createNodeAnnouncer } from '../storage/node-channel.js'
import { createDeviceRegistry } from '../devices/device-registry.js'
import { createLogger } from '../logger.js'
import { isValidSerial } from '../topics.js'
import { parseCommand, type Output } from './main.js'
import { viaServerOrDatabase } from './via-server.js'

export async function revoke (args: string[], output: Output): Promise<void> {
  const { positionals: [serial] } = parseCommand(args, {}, 1)
  if (!isValidSerial(serial)) throw new UsageError(`${JSON.stringify(serial)} is not a valid serial`)
  const { found } = await viaServerOrDatabase(loadConfig(), 'revoke', { serial }, async (db) => {
    const registry = createDeviceRegistry({ repo: createDeviceRepository(db.knex), announcer: createNodeAnnouncer(db), logger: createLogger('silent') })
    return await registry.setRevoked(serial, true)
  })
  if (!found) throw new CommandError(`no device with serial ${serial}`)
  output.out(`device ${serial} revoked`)
}
