// knex implementation of the device repository. Every query runs unchanged on PostgreSQL 15 and
// on PGlite.
import type { Knex } from 'knex'
import type { Device, DeviceRepository, DisconnectReason } from '../../devices/types.js'

export function createDeviceRepository (knex: Knex): DeviceRepository {
  const devices = () => knex<Device>('devices')
  const offline = (reason: DisconnectReason, at: Date): Partial<Device> => ({
    status: 'offline', disconnect_reason: reason, disconnected_at: at, last_seen_at: at,
    node_id: null, connection_id: null, updated_at: at
  })

  return {
    async find (serial) {
      return await devices().where({ serial }).first()
    },

    async registerCertificate (serial, fingerprint, notAfter) {
      const existing = await devices().where({ serial }).first('revoked', 'cert_fingerprint')
      if (existing === undefined) {
        const inserted = await devices()
          .insert({ serial, cert_fingerprint: fingerprint, cert_not_after: notAfter })
          .onConflict('serial').ignore()
          .returning('revoked')
        if (inserted.length > 0) return { revoked: false, created: true }
        return await this.registerCertificate(serial, fingerprint, notAfter) // lost a race with another connect
      }
      if (!existing.revoked && existing.cert_fingerprint !== fingerprint) {
        await devices().where({ serial }).update({ cert_fingerprint: fingerprint, cert_not_after: notAfter, updated_at: new Date() })
      }
      return { revoked: existing.revoked, created: false }
    },

    async setRevoked (serial, revoked) {
      return await devices().where({ serial }).update({ revoked, updated_at: new Date() }) > 0
    },

    async recordInfo (serial, firmware, metadata) {
      await devices().where({ serial }).update({
        ...firmware,
        metadata: knex.raw('devices.metadata || ?::jsonb', [JSON.stringify(metadata)]),
        updated_at: new Date()
      } as Record<string, unknown>)
    },

    async markOnline (serial, { nodeId, connectionId, at }) {
      await devices().where({ serial }).update({
        status: 'online', connected_at: at, last_seen_at: at, disconnect_reason: null,
        node_id: nodeId, connection_id: connectionId, updated_at: at
      })
    },

    async markOffline (serial, connectionId, reason, at) {
      return await devices().where({ serial, connection_id: connectionId }).update(offline(reason, at)) > 0
    },

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

    async countOnline () {
      const row = await devices().where({ status: 'online' }).count<{ count: string | number }>({ count: '*' }).first()
      return Number(row?.count ?? 0)
    }
  }
}
