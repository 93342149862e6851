// knex implementation of the group repository; the same queries run on PostgreSQL 15 and PGlite.
// Duplicate names are left to the unique index (both report SQLSTATE 23505), not checked first.
import type { Knex } from 'knex'
import type { Group, GroupRepository } from '../../groups/groups.js'

const UNIQUE_VIOLATION = '23505'

interface GroupRow extends Omit<Group, 'id' | 'device_count'> { id: string | number, device_count?: number }

const isUniqueViolation = (error: unknown): boolean => (error as { code?: unknown }).code === UNIQUE_VIOLATION

export function createGroupRepository (knex: Knex): GroupRepository {
  const withCount = () => knex('groups').select('groups.*',
    knex.raw('(SELECT count(*) FROM devices WHERE devices.group_id = groups.id)::int AS device_count'))
  // pg answers bigint columns as strings, PGlite as numbers
  const toGroup = (row: GroupRow): Group => ({ ...row, id: Number(row.id), device_count: row.device_count ?? 0 })

  async function find (id: number): Promise<Group | undefined> {
    const row = await withCount().where('groups.id', id).first() as GroupRow | undefined
    return row === undefined ? undefined : toGroup(row)
  }

  return {
    async list ({ after, limit }) {
      const query = withCount().orderBy('name').limit(limit)
      if (after !== undefined) query.where('name', '>', after)
      return (await query as GroupRow[]).map(toGroup)
    },

    find,

    async insert (group) {
      try {
        const [row] = await knex('groups').insert(group).returning('*') as GroupRow[]
        return { ok: true, group: toGroup(row!) }
      } catch (error) {
        if (isUniqueViolation(error)) return { ok: false, reason: 'name_taken' }
        throw error
      }
    },

    async update (id, changes) {
      try {
        const updated = await knex('groups').where({ id }).update({ ...changes, updated_at: new Date() })
        if (updated === 0) return { ok: false, reason: 'not_found' }
      } catch (error) {
        if (isUniqueViolation(error)) return { ok: false, reason: 'name_taken' }
        throw error
      }
      const group = await find(id)
      return group === undefined ? { ok: false, reason: 'not_found' } : { ok: true, group }
    },

    async remove (id) {
      // counted by the returned rows: on PGlite knex answers a plain delete with a result object, not a count
      return (await knex('groups').where({ id }).delete().returning('id')).length > 0
    },

    async addDevices (id, serials) {
      return await knex.transaction(async (trx) => {
        // FOR SHARE: the group cannot be deleted before this transaction commits
        if (await trx('groups').where({ id }).forShare().first('id') === undefined) return { ok: false as const, reason: 'not_found' as const }
        const known = new Set((await trx('devices').whereIn('serial', serials).select('serial') as Array<{ serial: string }>).map(row => row.serial))
        const unknown = serials.filter(serial => !known.has(serial))
        if (unknown.length > 0) return { ok: false as const, reason: 'unknown_serials' as const, serials: unknown }
        const added = await trx('devices')
          .whereIn('serial', serials)
          .where(q => { q.whereNull('group_id').orWhereNot('group_id', id) })
          .update({ group_id: id, updated_at: new Date() })
        return { ok: true as const, added }
      })
    },

    async members (id) {
      if (await knex('groups').where({ id }).first('id') === undefined) return undefined
      return await knex('devices').where({ group_id: id }).orderBy('serial').select('serial', 'status', 'revoked', 'firmware_version', 'firmware_target')
    },

    async removeDevice (id, serial) {
      return await knex('devices').where({ serial, group_id: id }).update({ group_id: null, updated_at: new Date() }) > 0
    }
  }
}
