// Presence, owned by the server: every connect and disconnect becomes a retained `status`
// message with a reason and a row update (status, last_seen_at, disconnect reason, node). Events of
// one device are applied in the order they happened, so a takeover's "offline" never lands after
// the new connection's "online". Rows left online by a node that died are swept offline.
import type { Logger } from '../logger.js'
import type { Publish } from '../ports.js'
import { deviceTopic } from '../topics.js'
import type { DeviceRepository, DisconnectReason } from '../devices/types.js'
import { createKeyedQueue } from '../keyed-queue.js'
import { discardEvents, type EventSink } from '../events/events.js'

export interface PresenceDeps {
  repo: DeviceRepository
  publish: Publish
  nodeId: string
  logger: Logger
  now?: () => Date
  /** Receives device.online / device.offline once the status is recorded and published. */
  events?: EventSink
}

export function statusPayload (status: 'online' | 'offline', at: Date, reason?: DisconnectReason): string {
  return JSON.stringify(reason === undefined ? { status, at: at.toISOString() } : { status, reason, at: at.toISOString() })
}

export function createPresence (deps: PresenceDeps) {
  const { repo, publish, nodeId, logger } = deps
  const now = deps.now ?? (() => new Date())
  const events = deps.events ?? discardEvents
  const queue = createKeyedQueue()
  // Once shutdown has marked this node's devices offline, the disconnects that closing the broker
  // causes have nothing left to record (and must not race the database closing).
  let shuttingDown = false

  /** Runs `task` after every earlier task of the same device; failures are logged, never thrown. */
  function inOrder (serial: string, task: () => Promise<void>): Promise<void> {
    return queue.run(serial, task).catch((error: unknown) => {
      logger.error({ serial, err: error }, 'presence update failed')
    })
  }

  async function publishStatus (serial: string, status: 'online' | 'offline', at: Date, reason?: DisconnectReason): Promise<void> {
    await publish(deviceTopic(serial, 'status'), statusPayload(status, at, reason), { qos: 1, retain: true })
    events.emit(status === 'online'
      ? { type: 'device.online', data: { serial, at: at.toISOString() } }
      : { type: 'device.offline', data: { serial, reason: reason ?? 'lost', at: at.toISOString() } })
  }

  function deviceConnected (serial: string, connectionId: string): Promise<void> {
    if (shuttingDown) return Promise.resolve()
    return inOrder(serial, async () => {
      const at = now()
      await repo.markOnline(serial, { nodeId, connectionId, at })
      await publishStatus(serial, 'online', at)
    })
  }

  function deviceDisconnected (serial: string, connectionId: string, reason: DisconnectReason): Promise<void> {
    if (shuttingDown) return Promise.resolve()
    return inOrder(serial, async () => {
      const at = now()
      // Only the connection that still holds the device may mark it offline: after a takeover on
      // another node the row already belongs to the new connection.
      if (!await repo.markOffline(serial, connectionId, reason, at)) return
      await publishStatus(serial, 'offline', at, reason)
    })
  }

  /** Publishes offline for rows already marked offline at `at` (the same time as the row's). */
  async function publishOffline (serials: readonly string[], reason: DisconnectReason, at: Date): Promise<void> {
    await Promise.all(serials.map(serial => inOrder(serial, async () => {
      await publishStatus(serial, 'offline', at, reason)
    })))
  }

  /** Marks offline the devices held by nodes that are no longer alive (reason `lost`). */
  async function sweepDeadNodes (liveNodeIds: readonly string[]): Promise<number> {
    const at = now()
    const serials = await repo.sweepOffline([nodeId, ...liveNodeIds], 'lost', at)
    if (serials.length > 0) logger.info({ count: serials.length }, 'swept devices left online by a node that is gone')
    await publishOffline(serials, 'lost', at)
    return serials.length
  }

  /** On shutdown: every device held by this node goes offline with reason `server_shutdown`. */
  async function shutdown (): Promise<number> {
    shuttingDown = true
    await queue.idle()
    const at = now()
    const serials = await repo.markNodeOffline(nodeId, 'server_shutdown', at)
    await publishOffline(serials, 'server_shutdown', at)
    return serials.length
  }

  /**
   * The in-process broker keeps retained messages in memory only: after a restart, the retained
   * status of every device the registry has offline is published again (not as events), so tools
   * see the same as before. Run before devices can connect; answers how many.
   */
  async function republishOfflineStatuses (): Promise<number> {
    const PAGE = 1000
    let count = 0
    for (let after: string | undefined; ;) {
      const page = await repo.list({ status: 'offline' }, { after, limit: PAGE })
      const disconnected = page.filter(device => device.disconnected_at !== null) // never connected: never had a status
      await Promise.all(disconnected.map(device =>
        publish(deviceTopic(device.serial, 'status'), statusPayload('offline', device.disconnected_at!, device.disconnect_reason ?? undefined), { qos: 1, retain: true })))
      count += disconnected.length
      if (page.length < PAGE) return count
      after = page.at(-1)!.serial
    }
  }

  return { deviceConnected, deviceDisconnected, sweepDeadNodes, shutdown, republishOfflineStatuses, isShuttingDown: () => shuttingDown, settled: queue.idle }
}

export type Presence = ReturnType<typeof createPresence>
