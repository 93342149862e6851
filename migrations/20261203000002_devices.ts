// The device registry: identity (serial, certificate), firmware, metadata, and presence
// (status, when and why it last disconnected, which node holds its connection).
import type { Knex } from 'knex'

export async function up (knex: Knex): Promise<void> {
  await knex.schema.createTable('devices', (table) => {
    table.bigIncrements('id').primary()
    table.text('serial').notNullable().unique()
    table.text('nickname')
    table.text('status').notNullable().defaultTo('offline')
    table.text('firmware_version')
    table.text('firmware_target')
    table.text('firmware_uuid')
    table.jsonb('metadata').notNullable().defaultTo('{}')
    table.text('cert_fingerprint')
    table.timestamp('cert_not_after', { useTz: true })
    table.boolean('revoked').notNullable().defaultTo(false)
    table.timestamp('last_seen_at', { useTz: true })
    table.bigInteger('group_id').references('id').inTable('groups').onDelete('SET NULL')
    table.timestamp('connected_at', { useTz: true })
    table.timestamp('disconnected_at', { useTz: true })
    table.text('disconnect_reason')
    table.text('node_id')
    table.uuid('connection_id')
    table.timestamp('inserted_at', { useTz: true }).notNullable().defaultTo(knex.fn.now())
    table.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.fn.now())
    table.index(['group_id'])
    // No index on status (two values, and every connect and disconnect changes it): without it the
    // presence columns can be updated in place (HOT), the most frequent write of the server.
  })
  await knex.raw("ALTER TABLE devices ADD CONSTRAINT devices_status_check CHECK (status IN ('online', 'offline'))")
}

export async function down (knex: Knex): Promise<void> {
  await knex.schema.dropTable('devices')
}
