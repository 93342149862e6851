// Commands to devices, tracked from request to result (contract §3/§4): one row per command, and
// one per group fan-out (command_batches) so that a fan-out can be counted by state and retried
// idempotently. Rows live in the database, so queued commands survive a restart.
import type { Knex } from 'knex'

export async function up (knex: Knex): Promise<void> {
  await knex.schema.createTable('command_batches', (table) => {
    table.uuid('id').primary()
    table.bigInteger('group_id').references('id').inTable('groups').onDelete('SET NULL')
    table.text('command').notNullable()
    table.jsonb('payload').notNullable()
    table.text('idempotency_key')
    table.timestamp('issued_at', { useTz: true }).notNullable()
    table.timestamp('expires_at', { useTz: true }).notNullable()
  })
  await knex.raw('CREATE UNIQUE INDEX command_batches_group_key ON command_batches (group_id, idempotency_key) WHERE idempotency_key IS NOT NULL')

  await knex.schema.createTable('commands', (table) => {
    table.uuid('id').primary()
    table.text('serial').notNullable().references('serial').inTable('devices').onDelete('CASCADE')
    table.text('command').notNullable()
    table.jsonb('payload').notNullable()
    table.text('state').notNullable()
    table.jsonb('result')
    table.text('error')
    table.text('idempotency_key')
    table.uuid('batch_id').references('id').inTable('command_batches').onDelete('SET NULL')
    table.timestamp('issued_at', { useTz: true }).notNullable()
    table.timestamp('expires_at', { useTz: true }).notNullable()
    table.timestamp('sent_at', { useTz: true })
    table.timestamp('completed_at', { useTz: true })
    table.double('round_trip_ms')
  })
  await knex.raw("ALTER TABLE commands ADD CONSTRAINT commands_state_check CHECK (state IN ('queued', 'sent', 'ok', 'error', 'expired'))")
  // a device's history, newest first, and its open commands in order
  await knex.raw('CREATE INDEX commands_serial_issued ON commands (serial, issued_at, id)')
  await knex.raw('CREATE UNIQUE INDEX commands_serial_key ON commands (serial, idempotency_key) WHERE idempotency_key IS NOT NULL')
  // the expiry sweep looks at open commands only
  await knex.raw("CREATE INDEX commands_open_expiry ON commands (expires_at) WHERE state IN ('queued', 'sent')")
  await knex.raw('CREATE INDEX commands_batch ON commands (batch_id) WHERE batch_id IS NOT NULL')
}

export async function down (knex: Knex): Promise<void> {
  await knex.schema.dropTable('commands')
  await knex.schema.dropTable('command_batches')
}
