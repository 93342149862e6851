// Carries "device revoked" announcements to every Shepherd node. On PostgreSQL it is
// LISTEN/NOTIFY, so a revocation made by any process — another node, the CLI — reaches all
// nodes within milliseconds. The embedded database serves a single process, so there it is a
// plain in-process call.
import pg from 'pg'
import type { RevocationAnnouncer } from '../devices/device-registry.js'
import type { Database } from './db.js'
import type { Logger } from '../logger.js'

const CHANNEL = 'shepherd_device_revoked'

export interface RevocationChannel extends RevocationAnnouncer {
  close (): Promise<void>
}

/** Announces only (the CLI): no LISTEN connection. */
export function createRevocationAnnouncer (db: Database): RevocationAnnouncer {
  return {
    async announceRevoked (serial) {
      if (db.kind === 'postgres') await db.knex.raw('SELECT pg_notify(?, ?)', [CHANNEL, serial])
    }
  }
}

export async function openRevocationChannel (db: Database, onRevoked: (serial: string) => void, logger: Logger): Promise<RevocationChannel> {
  if (db.kind !== 'postgres' || db.url === undefined) {
    return { announceRevoked: async (serial) => { onRevoked(serial) }, close: async () => {} }
  }
  let closing = false
  let listener: pg.Client | undefined
  const connect = async (): Promise<void> => {
    const client = new pg.Client({ connectionString: db.url })
    client.on('notification', (message) => { if (message.payload !== undefined) onRevoked(message.payload) })
    client.on('error', (error) => {
      if (closing) return
      logger.error({ err: error }, 'revocation listener lost its database connection; reconnecting')
      client.end().catch(() => {})
      setTimeout(() => { if (!closing) connect().catch((e: unknown) => logger.error({ err: e }, 'revocation listener reconnect failed')) }, 1000).unref()
    })
    await client.connect()
    await client.query(`LISTEN ${CHANNEL}`)
    listener = client
  }
  await connect()
  const announcer = createRevocationAnnouncer(db)
  return {
    announceRevoked: announcer.announceRevoked,
    async close () {
      closing = true
      await listener?.end().catch(() => {})
    }
  }
}
