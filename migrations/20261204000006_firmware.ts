// OTA firmware (contract §3/§4): the firmware store's records (the files live in FIRMWARE_DIR),
// one row per update of one device with its stage timestamps, and one per group rollout so that
// a rollout can be counted by state. An update copies the firmware's version, target, sha256 and
// size, so its history stays readable after the firmware is deleted.
import type { Knex } from 'knex'

export async function up (knex: Knex): Promise<void> {
  await knex.schema.createTable('firmware', (table) => {
    table.uuid('id').primary()
    table.text('version').notNullable()
    table.text('target').notNullable()
    table.text('application')
    table.text('sha256').notNullable().unique()
    table.bigInteger('size').notNullable()
    table.text('storage_name').notNullable()
    table.timestamp('created_at', { useTz: true }).notNullable()
  })
  await knex.raw("CREATE UNIQUE INDEX firmware_identity ON firmware (target, coalesce(application, ''), version)")

  await knex.schema.createTable('update_rollouts', (table) => {
    table.uuid('id').primary()
    table.bigInteger('group_id').references('id').inTable('groups').onDelete('SET NULL')
    table.uuid('firmware_id').references('id').inTable('firmware').onDelete('SET NULL')
    table.text('version').notNullable()
    table.timestamp('created_at', { useTz: true }).notNullable()
  })

  await knex.schema.createTable('updates', (table) => {
    table.uuid('id').primary()
    table.text('serial').notNullable().references('serial').inTable('devices').onDelete('CASCADE')
    table.uuid('firmware_id').references('id').inTable('firmware').onDelete('SET NULL')
    table.text('version').notNullable()
    table.text('target').notNullable()
    table.text('sha256').notNullable()
    table.bigInteger('size').notNullable()
    table.text('previous_version')
    table.text('state').notNullable()
    table.integer('progress')
    table.text('error')
    table.text('failure_reason')
    table.uuid('command_id').references('id').inTable('commands').onDelete('SET NULL')
    table.uuid('rollout_id').references('id').inTable('update_rollouts').onDelete('SET NULL')
    table.timestamp('created_at', { useTz: true }).notNullable()
    table.timestamp('expires_at', { useTz: true }).notNullable()
    table.timestamp('status_at', { useTz: true }).notNullable()
    table.timestamp('downloading_at', { useTz: true })
    table.timestamp('applying_at', { useTz: true })
    table.timestamp('completed_at', { useTz: true })
  })
  await knex.raw("ALTER TABLE updates ADD CONSTRAINT updates_state_check CHECK (state IN ('pending', 'downloading', 'applying', 'complete', 'failed'))")
  // one update in progress per device
  await knex.raw("CREATE UNIQUE INDEX updates_one_active ON updates (serial) WHERE state IN ('pending', 'downloading', 'applying')")
  await knex.raw('CREATE INDEX updates_serial_created ON updates (serial, created_at, id)')
  await knex.raw('CREATE INDEX updates_rollout ON updates (rollout_id) WHERE rollout_id IS NOT NULL')
  await knex.raw('CREATE INDEX updates_firmware ON updates (firmware_id) WHERE firmware_id IS NOT NULL')
}

export async function down (knex: Knex): Promise<void> {
  await knex.schema.dropTable('updates')
  await knex.schema.dropTable('update_rollouts')
  await knex.schema.dropTable('firmware')
}
