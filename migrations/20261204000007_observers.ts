// Read-only MQTT accounts for third-party tools (contract §3): a name and a scrypt hash of the
// password, which is shown once when the account is made.
import type { Knex } from 'knex'

export async function up (knex: Knex): Promise<void> {
  await knex.schema.createTable('observers', (table) => {
    table.bigIncrements('id')
    table.text('name').notNullable().unique()
    table.text('password_hash').notNullable()
    table.timestamp('inserted_at', { useTz: true }).notNullable().defaultTo(knex.fn.now())
  })
}

export async function down (knex: Knex): Promise<void> {
  await knex.schema.dropTable('observers')
}
