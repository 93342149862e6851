// Groups of devices for fleet-wide actions.
import type { Knex } from 'knex'

export async function up (knex: Knex): Promise<void> {
  await knex.schema.createTable('groups', (table) => {
    table.bigIncrements('id').primary()
    table.text('name').notNullable().unique()
    table.text('description')
    table.timestamp('inserted_at', { useTz: true }).notNullable().defaultTo(knex.fn.now())
    table.timestamp('updated_at', { useTz: true }).notNullable().defaultTo(knex.fn.now())
  })
}

export async function down (knex: Knex): Promise<void> {
  await knex.schema.dropTable('groups')
}
