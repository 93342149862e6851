// Groups of devices: create, list and page, rename, describe, delete (members become ungrouped),
// and membership (a device belongs to at most one group). Knows nothing of HTTP or knex.
import { afterCursor, pageOf, type Page } from '../paging.js'

export interface Group {
  id: number
  name: string
  description: string | null
  device_count: number
  inserted_at: Date
  updated_at: Date
}

export interface GroupChanges {
  name?: string
  description?: string | null
}

export type GroupResult = { ok: true, group: Group } | { ok: false, reason: 'name_taken' | 'not_found' }
export type AddDevicesResult =
  | { ok: true, added: number }
  | { ok: false, reason: 'not_found' }
  | { ok: false, reason: 'unknown_serials', serials: string[] }

export interface GroupRepository {
  /** Groups ordered by name, after the name `after`. */
  list (page: { after?: string, limit: number }): Promise<Group[]>
  find (id: number): Promise<Group | undefined>
  insert (group: { name: string, description: string | null }): Promise<GroupResult>
  update (id: number, changes: GroupChanges): Promise<GroupResult>
  /** Answers false when there was no such group. Its devices become ungrouped. */
  remove (id: number): Promise<boolean>
  /**
   * Puts every device in the group, in one transaction: nothing changes when the group or one of
   * the serials is unknown. `added` counts the devices that were not in the group before.
   */
  addDevices (id: number, serials: readonly string[]): Promise<AddDevicesResult>
  /** Answers false when the device is not in this group. */
  removeDevice (id: number, serial: string): Promise<boolean>
  /** The group's devices (serial, presence, revocation) ordered by serial; undefined when there is no such group. */
  members (id: number): Promise<GroupMember[] | undefined>
}

export interface GroupMember { serial: string, status: 'online' | 'offline', revoked: boolean, firmware_version: string | null, firmware_target: string | null }

export type CreateGroupResult = GroupResult | { ok: false, reason: 'invalid_name' }

export const GROUP_NAME_MAX = 128

const CONTROL = /[\u0000-\u001f\u007f-\u009f]/

/** The name as stored (trimmed), or undefined when it is empty, too long or has control characters. */
export function normalizeGroupName (name: string): string | undefined {
  const trimmed = name.trim()
  return trimmed.length >= 1 && trimmed.length <= GROUP_NAME_MAX && !CONTROL.test(trimmed) ? trimmed : undefined
}

export function createGroups (repo: GroupRepository) {
  return {
    /** Throws InvalidCursor for a cursor this server did not issue. */
    async list (page: { cursor?: string, limit: number }): Promise<Page<Group>> {
      const rows = await repo.list({ after: afterCursor(page.cursor), limit: page.limit + 1 })
      return pageOf(rows, page.limit, group => group.name)
    },

    get: (id: number) => repo.find(id),

    async create (input: { name: string, description?: string | null }): Promise<CreateGroupResult> {
      const name = normalizeGroupName(input.name)
      if (name === undefined) return { ok: false, reason: 'invalid_name' }
      return await repo.insert({ name, description: input.description ?? null })
    },

    async update (id: number, changes: GroupChanges): Promise<CreateGroupResult> {
      if (changes.name === undefined) return await repo.update(id, changes)
      const name = normalizeGroupName(changes.name)
      if (name === undefined) return { ok: false, reason: 'invalid_name' }
      return await repo.update(id, { ...changes, name })
    },

    remove: (id: number) => repo.remove(id),

    addDevices: (id: number, serials: readonly string[]) => repo.addDevices(id, [...new Set(serials)]),

    removeDevice: (id: number, serial: string) => repo.removeDevice(id, serial)
  }
}

export type Groups = ReturnType<typeof createGroups>
