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

export async function openNodeChannel (db: Database, handlers: AnnouncementHandlers, logger: Logger): Promise<NodeChannel> {
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
    client.on('error', (error) => {
      if (closing) return
      logger.error({ err: error }, 'announcement listener lost its database connection; reconnecting')
      client.end().catch(() => {})
      setTimeout(() => { if (!closing) connect().catch((e: unknown) => logger.error({ err: e }, 'announcement listener reconnect failed')) }, 1000).unref()
    })
    await client.connect()
    for (const channel of byChannel.keys()) await client.query(`LISTEN ${channel}`)
    listener = client
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
