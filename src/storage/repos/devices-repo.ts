// knex implementation of the device repository. Every query runs unchanged on PostgreSQL 15 and
// on PGlite.
import type { Knex } from 'knex'
import type { Device, DeviceRepository, DisconnectReason } from '../../devices/types.js'
import { createBatcher } from '../../batcher.js'

export function createDeviceRepository (knex: Knex): DeviceRepository {
  const devices = () => knex<Device>('devices')
  const offline = (reason: DisconnectReason, at: Date): Partial<Device> => ({
    status: 'offline', disconnect_reason: reason, disconnected_at: at, last_seen_at: at,
    node_id: null, connection_id: null, updated_at: at
  })

  // The statements of every connect and disconnect are batched: in a reconnect storm one
  // statement serves hundreds of devices instead of one round trip (or one PGlite call) each.
  // Presence never queues two updates of one device at once, so a batch holds a serial once.

  const registerCertificate = createBatcher(async (items: Array<{ serial: string, fingerprint: string, notAfter: Date }>) => {
    const serials = [...new Set(items.map(item => item.serial))]
    const known = new Map((await devices().whereIn('serial', serials).select('serial', 'revoked', 'cert_fingerprint'))
      .map(row => [row.serial, row]))
    const unknown = items.filter(item => !known.has(item.serial))
    const created = new Set<string>()
    if (unknown.length > 0) {
      const inserted = await devices()
        .insert([...new Map(unknown.map(item => [item.serial, { serial: item.serial, cert_fingerprint: item.fingerprint, cert_not_after: item.notAfter }])).values()])
        .onConflict('serial').ignore()
        .returning('serial')
      for (const row of inserted) created.add(row.serial)
      const raced = unknown.map(item => item.serial).filter(serial => !created.has(serial)) // inserted meanwhile by another node
      if (raced.length > 0) {
        for (const row of await devices().whereIn('serial', raced).select('serial', 'revoked', 'cert_fingerprint')) known.set(row.serial, row)
      }
    }
    for (const item of items) {
      const row = known.get(item.serial)
      if (row !== undefined && !row.revoked && row.cert_fingerprint !== item.fingerprint) { // a renewed certificate
        await devices().where({ serial: item.serial }).update({ cert_fingerprint: item.fingerprint, cert_not_after: item.notAfter, updated_at: new Date() })
        row.cert_fingerprint = item.fingerprint
      }
    }
    return items.map(item => ({ revoked: known.get(item.serial)?.revoked ?? false, created: created.has(item.serial) }))
  })

  const markOnline = createBatcher(async (items: Array<{ serial: string, nodeId: string, connectionId: string, at: Date }>) => {
    await knex.raw(`UPDATE devices AS d SET status = 'online', connected_at = v.at, last_seen_at = v.at, disconnect_reason = NULL,
        node_id = v.node_id, connection_id = v.connection_id, updated_at = v.at
      FROM (VALUES ${items.map(() => '(?, ?, ?::uuid, ?::timestamptz)').join(', ')}) AS v (serial, node_id, connection_id, at)
      WHERE d.serial = v.serial`, items.flatMap(item => [item.serial, item.nodeId, item.connectionId, item.at]))
    return items.map(() => undefined)
  })

  const markOffline = createBatcher(async (items: Array<{ serial: string, connectionId: string, reason: DisconnectReason, at: Date }>) => {
    // only the connection that still holds the device may mark it offline
    const result = await knex.raw(`UPDATE devices AS d SET status = 'offline', disconnect_reason = v.reason, disconnected_at = v.at,
        last_seen_at = v.at, node_id = NULL, connection_id = NULL, updated_at = v.at
      FROM (VALUES ${items.map(() => '(?, ?::uuid, ?, ?::timestamptz)').join(', ')}) AS v (serial, connection_id, reason, at)
      WHERE d.serial = v.serial AND d.connection_id = v.connection_id
      RETURNING d.serial`, items.flatMap(item => [item.serial, item.connectionId, item.reason, item.at])) as { rows: Array<{ serial: string }> }
    const marked = new Set(result.rows.map(row => row.serial))
    return items.map(item => marked.has(item.serial))
  })

  return {
    async list (filter, { after, limit }) {
      const query = devices().orderBy('serial').limit(limit)
      if (after !== undefined) query.where('serial', '>', after)
      if (filter.status !== undefined) query.where({ status: filter.status })
      if (filter.group_id !== undefined) query.where({ group_id: filter.group_id })
      if (filter.firmware_version !== undefined) query.where({ firmware_version: filter.firmware_version })
      if (filter.revoked !== undefined) query.where({ revoked: filter.revoked })
      if (filter.q !== undefined) {
        const pattern = `%${filter.q.replace(/[\\%_]/g, '\\$&')}%`
        query.where(q => { q.whereILike('serial', pattern).orWhereILike('nickname', pattern) })
      }
      return await query.select()
    },

    async find (serial) {
      return await devices().where({ serial }).first()
    },

    async update (serial, changes) {
      return await knex.transaction(async (trx) => {
        if (changes.group_id !== undefined && changes.group_id !== null &&
          await trx('groups').where({ id: changes.group_id }).first('id') === undefined) {
          return { ok: false as const, reason: 'no_such_group' as const }
        }
        const { metadata, ...columns } = changes
        const set: Record<string, unknown> = { ...columns, updated_at: new Date() }
        if (metadata !== undefined) {
          set.metadata = trx.raw('(devices.metadata || ?::jsonb) - ?::text[]', [JSON.stringify(metadata.set), metadata.remove])
        }
        const [device] = await trx<Device>('devices').where({ serial }).update(set).returning('*')
        return device === undefined ? { ok: false as const, reason: 'not_found' as const } : { ok: true as const, device }
      })
    },

    async remove (serial) {
      // counted by the returned rows: on PGlite knex answers a plain delete with a result object, not a count
      return (await devices().where({ serial }).delete().returning('id')).length > 0
    },

    registerCertificate: (serial, fingerprint, notAfter) => registerCertificate({ serial, fingerprint, notAfter }),

    async setRevoked (serial, revoked) {
      return await devices().where({ serial }).update({ revoked, updated_at: new Date() }) > 0
    },

    async recordInfo (serial, firmware, metadata, maxMetadataBytes) {
      const merged = JSON.stringify(metadata)
      const updated = await devices().where({ serial })
        .whereRaw('octet_length((devices.metadata || ?::jsonb)::text) <= ?', [merged, maxMetadataBytes])
        .update({ ...firmware, metadata: knex.raw('devices.metadata || ?::jsonb', [merged]), updated_at: new Date() } as Record<string, unknown>)
      return updated > 0
    },

    markOnline: (serial, { nodeId, connectionId, at }) => markOnline({ serial, nodeId, connectionId, at }),

    markOffline: (serial, connectionId, reason, at) => markOffline({ serial, connectionId, reason, at }),

    async sweepOffline (liveNodeIds, reason, at) {
      const rows = await devices()
        .where({ status: 'online' })
        .where(q => { q.whereNotIn('node_id', liveNodeIds).orWhereNull('node_id') })
        .update(offline(reason, at))
        .returning('serial')
      return rows.map(row => row.serial)
    },

    async markNodeOffline (nodeId, reason, at) {
      const rows = await devices().where({ status: 'online', node_id: nodeId }).update(offline(reason, at)).returning('serial')
      return rows.map(row => row.serial)
    },

    async revokedOnlineOn (nodeId) {
      return (await devices().where({ status: 'online', node_id: nodeId, revoked: true }).select('serial') as Array<{ serial: string }>).map(row => row.serial)
    },

    async countOnline () {
      const row = await devices().where({ status: 'online' }).count<{ count: string | number }>({ count: '*' }).first()
      return Number(row?.count ?? 0)
    }
  }
}
