// Carries announcements to every Shepherd node: "device revoked" (disconnect it) and "command
// queued" (deliver it if the device is connected here; the CLI issues commands without a broker).
// On PostgreSQL it is LISTEN/NOTIFY, so an announcement made by any process — another node, the
// CLI — reaches all nodes within milliseconds. The embedded database serves a single process, so
// there it is a plain in-process call.
import pg from 'pg'
import type { RevocationAnnouncer } from '../devices/device-registry.js'
import type { Database } from './db.js'
import type { Logger } from '../logger.js'

const CHANNELS = { revoked: 'shepherd_device_revoked', commandQueued: 'shepherd_command_queued' } as const
type Announcement = keyof typeof CHANNELS

export interface NodeAnnouncer extends RevocationAnnouncer {
  announceCommandQueued (serials: string[]): Promise<void>
}

export interface NodeChannel extends NodeAnnouncer {
  close (): Promise<void>
}

export type AnnouncementHandlers = Record<Announcement, (serial: string) => void>

// A payload is serials separated by commas (a serial has none), under PostgreSQL's 8000-byte limit.
const MAX_PAYLOAD_BYTES = 7900

function payloadsOf (serials: readonly string[]): string[] {
  const payloads: string[] = []
  let current = ''
  for (const serial of serials) {
    if (current !== '' && current.length + 1 + serial.length > MAX_PAYLOAD_BYTES) {
      payloads.push(current)
      current = ''
    }
    current = current === '' ? serial : `${current},${serial}`
  }
  if (current !== '') payloads.push(current)
  return payloads
}

/** Announces only (the CLI): no LISTEN connection. */
export function createNodeAnnouncer (db: Database): NodeAnnouncer {
  const notify = async (announcement: Announcement, serials: readonly string[]): Promise<void> => {
    if (db.kind !== 'postgres') return
    for (const payload of payloadsOf([...new Set(serials)])) await db.knex.raw('SELECT pg_notify(?, ?)', [CHANNELS[announcement], payload])
  }
  return { announceRevoked: serial => notify('revoked', [serial]), announceCommandQueued: serials => notify('commandQueued', serials) }
}

const RECONNECT_FIRST_MS = 1000
const RECONNECT_MAX_MS = 30_000

/**
 * `caughtUp` runs after the listener reconnected: announcements made while it was away are lost
 * (NOTIFY is not queued for absent listeners), so the caller looks again at what they would have said.
 */
export async function openNodeChannel (db: Database, handlers: AnnouncementHandlers, logger: Logger, caughtUp: () => void = () => {}): Promise<NodeChannel> {
  if (db.kind !== 'postgres' || db.url === undefined) {
    return {
      announceRevoked: async (serial) => { handlers.revoked(serial) },
      announceCommandQueued: async (serials) => { for (const serial of new Set(serials)) handlers.commandQueued(serial) },
      close: async () => {}
    }
  }
  const byChannel = new Map<string, (serial: string) => void>(Object.entries(CHANNELS).map(([announcement, channel]) => [channel, handlers[announcement as Announcement]]))
  let closing = false
  let listener: pg.Client | undefined
  const connect = async (): Promise<void> => {
    const client = new pg.Client({ connectionString: db.url })
    client.on('notification', (message) => {
      const handler = byChannel.get(message.channel)
      if (handler !== undefined && message.payload !== undefined) for (const serial of message.payload.split(',')) handler(serial)
    })
    let listening = false // before: a failure rejects connect(), whose caller tries again; after: one reconnect
    client.on('error', (error) => {
      if (closing || !listening) return
      listening = false
      listener = undefined
      client.end().catch(() => {})
      logger.error({ err: error }, 'announcement listener lost its database connection; reconnecting')
      reconnect(RECONNECT_FIRST_MS)
    })
    try {
      await client.connect()
      for (const channel of byChannel.keys()) await client.query(`LISTEN ${channel}`)
    } catch (error) {
      client.end().catch(() => {})
      throw error
    }
    listening = true
    listener = client
  }
  /** Tries again, waiting twice as long after each failure (at most 30 s), until connected or closed. */
  const reconnect = (delayMs: number): void => {
    setTimeout(() => {
      if (closing) return
      connect().then(() => {
        logger.info('announcement listener reconnected')
        caughtUp()
      }, (error: unknown) => {
        const next = Math.min(delayMs * 2, RECONNECT_MAX_MS)
        logger.error({ err: error, retry_in_ms: next }, 'announcement listener reconnect failed')
        reconnect(next)
      })
    }, delayMs).unref()
  }
  await connect()
  return {
    ...createNodeAnnouncer(db),
    async close () {
      closing = true
      await listener?.end().catch(() => {})
    }
  }
}
