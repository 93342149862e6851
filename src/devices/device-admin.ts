// What operators do to the registry: list and page through devices, read one, change its
// nickname, group or metadata, delete it, revoke or restore it. Knows nothing of HTTP.
import type { EventSink } from '../events/events.js'
import type { Publish } from '../ports.js'
import { afterCursor, pageOf, type Page } from '../paging.js'
import { deviceTopic } from '../topics.js'
import type { RevocationAnnouncer } from './device-registry.js'
import type { Device, DeviceChanges, DeviceFilter, DeviceRepository, UpdateDeviceResult } from './types.js'

export interface DevicePatch {
  nickname?: string | null
  group_id?: number | null
  /** Merged into the device's metadata; a key set to null is removed. */
  metadata?: Record<string, unknown>
}

export interface DeviceAdminDeps {
  repo: DeviceRepository
  registry: { setRevoked (serial: string, revoked: boolean): Promise<{ found: boolean }> }
  /** Closes the device's connection wherever it is (all nodes). */
  kicker: RevocationAnnouncer
  publish: Publish
  events: EventSink
  now? (): Date
}

export function createDeviceAdmin (deps: DeviceAdminDeps) {
  const { repo, registry, kicker, publish, events } = deps
  const now = deps.now ?? (() => new Date())

  return {
    /** Throws InvalidCursor for a cursor this server did not issue. */
    async list (filter: DeviceFilter, page: { cursor?: string, limit: number }): Promise<Page<Device>> {
      const rows = await repo.list(filter, { after: afterCursor(page.cursor), limit: page.limit + 1 })
      return pageOf(rows, page.limit, device => device.serial)
    },

    get: (serial: string) => repo.find(serial),

    async update (serial: string, patch: DevicePatch): Promise<UpdateDeviceResult> {
      const { metadata, ...columns } = patch
      const changes: DeviceChanges = { ...columns }
      if (metadata !== undefined) {
        const entries = Object.entries(metadata)
        changes.metadata = {
          set: Object.fromEntries(entries.filter(([, value]) => value !== null)),
          remove: entries.filter(([, value]) => value === null).map(([key]) => key)
        }
      }
      return await repo.update(serial, changes)
    },

    /**
     * Removes the device from the registry (its commands and updates with it), closes its
     * connection and clears its retained messages: status, info and a pending firmware offer that
     * no update tracks any more. A device whose certificate is still valid registers again when
     * it reconnects: revoke it to keep it out.
     */
    async remove (serial: string): Promise<boolean> {
      const device = await repo.find(serial)
      if (device === undefined || !await repo.remove(serial)) return false
      // presence finds no row to mark offline once the device is gone: the event is said here
      if (device.status === 'online') events.emit({ type: 'device.offline', data: { serial, reason: 'deleted', at: now().toISOString() } })
      await kicker.announceRevoked(serial)
      for (const leaf of ['status', 'info', 'firmware'] as const) await publish(deviceTopic(serial, leaf), '', { qos: 1, retain: true })
      return true
    },

    /** Revokes (the device is disconnected at once, on every node) or restores a device. */
    async setRevoked (serial: string, revoked: boolean): Promise<Device | undefined> {
      const { found } = await registry.setRevoked(serial, revoked)
      return found ? await repo.find(serial) : undefined
    }
  }
}

export type DeviceAdmin = ReturnType<typeof createDeviceAdmin>
