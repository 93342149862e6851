// Operator API tokens. Only a SHA-256 of each token is stored: tokens are 256 random bits, so a
// fast hash is enough to make a stolen table useless, and lets a request be checked by one lookup.
import type { Knex } from 'knex'

export async function up (knex: Knex): Promise<void> {
  await knex.schema.createTable('api_tokens', (table) => {
    table.bigIncrements('id').primary()
    table.text('name').notNullable().unique()
    table.text('token_hash').notNullable().unique()
    table.timestamp('inserted_at', { useTz: true }).notNullable().defaultTo(knex.fn.now())
    table.timestamp('last_used_at', { useTz: true })
  })
}

export async function down (knex: Knex): Promise<void> {
  await knex.schema.dropTable('api_tokens')
}
