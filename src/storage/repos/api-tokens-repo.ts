// knex implementation of the API token repository.
import type { Knex } from 'knex'
import type { ApiTokenRecord, ApiTokenRepository } from '../../operators/api-tokens.js'

const PUBLIC_COLUMNS = ['name', 'inserted_at', 'last_used_at'] as const

export function createApiTokenRepository (knex: Knex): ApiTokenRepository {
  const tokens = () => knex('api_tokens')
  return {
    async insert (name, tokenHash) {
      const rows = await tokens().insert({ name, token_hash: tokenHash }).onConflict('name').ignore().returning('id')
      return rows.length > 0
    },
    async use (tokenHash, at) {
      const record = await tokens().where({ token_hash: tokenHash }).first(PUBLIC_COLUMNS) as ApiTokenRecord | undefined
      // last_used_at is for operators auditing tokens: minute precision spares a write per request
      if (record !== undefined && (record.last_used_at === null || at.getTime() - record.last_used_at.getTime() > 60_000)) {
        await tokens().where({ token_hash: tokenHash }).update({ last_used_at: at })
        record.last_used_at = at
      }
      return record
    },
    async list () {
      return await tokens().select(PUBLIC_COLUMNS).orderBy('name') as ApiTokenRecord[]
    },
    async remove (name) {
      // counted by the returned rows: on PGlite knex answers a plain delete with a result object, not a count
      return (await tokens().where({ name }).delete().returning('id')).length > 0
    }
  }
}
