// knex implementation of the observer account repository.
import type { Knex } from 'knex'
import type { ObserverRecord, ObserverRepository } from '../../observers/observers.js'

export function createObserverRepository (knex: Knex): ObserverRepository {
  const observers = () => knex('observers')
  return {
    async insert (name, passwordHash) {
      return (await observers().insert({ name, password_hash: passwordHash }).onConflict('name').ignore().returning('id')).length > 0
    },
    async passwordHash (name) {
      return (await observers().where({ name }).first('password_hash') as { password_hash: string } | undefined)?.password_hash
    },
    async list () {
      return await observers().select('name', 'inserted_at').orderBy('name') as ObserverRecord[]
    },
    async remove (name) {
      return (await observers().where({ name }).delete().returning('id')).length > 0
    }
  }
}
