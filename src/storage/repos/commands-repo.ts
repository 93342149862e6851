// knex implementation of the command repository. Every statement runs unchanged on PostgreSQL 15
// and on PGlite.
import type { Knex } from 'knex'
import { createBatcher } from '../../batcher.js'
import { newestFirst } from './keyset.js'
import { COMMAND_STATES, type BatchCounts, type Command, type CommandBatch, type CommandRepository, type CommandState, type NewCommand } from '../../commands/types.js'

const OPEN: readonly CommandState[] = ['queued', 'sent']
const INSERT_CHUNK = 1000

type CommandRow = Omit<Command, 'round_trip_ms'> & { round_trip_ms: number | string | null }

const commandOf = (row: CommandRow): Command => ({ ...row, round_trip_ms: row.round_trip_ms === null ? null : Number(row.round_trip_ms) })
const batchOf = (row: CommandBatch & { group_id: number | string | null }): CommandBatch => ({ ...row, group_id: row.group_id === null ? null : Number(row.group_id) })
const asRow = (command: NewCommand) => ({ ...command, payload: JSON.stringify(command.payload) })

export function createCommandRepository (knex: Knex): CommandRepository {
  const commands = () => knex<CommandRow>('commands')

  // every device that subscribes asks for its open commands: in a connect storm one statement
  // serves the devices of a window (a device is never twice in one: its deliveries run one at a time)
  const takeDeliverable = createBatcher(async (items: Array<{ serial: string, now: Date, onlyQueued: boolean }>) => {
    const now = new Date(Math.max(...items.map(item => item.now.getTime()))) // the latest: nothing expired is delivered
    const bySerial = new Map(items.map(item => [item.serial, [] as Command[]]))
    const rows = await commands()
      .where(query => {
        for (const onlyQueued of [false, true]) {
          const serials = items.filter(item => item.onlyQueued === onlyQueued).map(item => item.serial)
          if (serials.length > 0) void query.orWhere(q => { void q.whereIn('serial', serials).whereIn('state', onlyQueued ? ['queued'] : OPEN) })
        }
      })
      .where('expires_at', '>', now)
      .update({ state: 'sent', sent_at: now }).returning('*') as CommandRow[]
    for (const row of rows) bySerial.get(row.serial)?.push(commandOf(row))
    return items.map(item => bySerial.get(item.serial)!.sort((a, b) => a.issued_at.getTime() - b.issued_at.getTime() || a.id.localeCompare(b.id)))
  })

  return {
    async insert (command) {
      const inserted = await commands().insert(asRow(command) as never).onConflict(knex.raw('(serial, idempotency_key) WHERE idempotency_key IS NOT NULL')).ignore().returning('*') as CommandRow[]
      if (inserted.length > 0) return { command: commandOf(inserted[0]!), inserted: true }
      const existing = await commands().where({ serial: command.serial, idempotency_key: command.idempotency_key }).first() as CommandRow
      return { command: commandOf(existing), inserted: false }
    },

    async insertMany (drafts) {
      const rows: CommandRow[] = []
      for (let i = 0; i < drafts.length; i += INSERT_CHUNK) {
        rows.push(...await commands().insert(drafts.slice(i, i + INSERT_CHUNK).map(asRow) as never).returning('*') as CommandRow[])
      }
      const byId = new Map(rows.map(row => [row.id, commandOf(row)]))
      return drafts.map(draft => byId.get(draft.id)!)
    },

    async insertBatch (batch, drafts) {
      return await knex.transaction(async (trx) => {
        const [created] = await trx('command_batches').insert({ ...batch, payload: JSON.stringify(batch.payload) })
          .onConflict(knex.raw('(group_id, idempotency_key) WHERE idempotency_key IS NOT NULL')).ignore().returning('*') as CommandBatch[]
        if (created === undefined) {
          const existing = await trx('command_batches').where({ group_id: batch.group_id, idempotency_key: batch.idempotency_key }).first() as CommandBatch
          const rows = await trx('commands').where({ batch_id: existing.id }).orderBy('serial') as CommandRow[]
          return { batch: batchOf(existing), commands: rows.map(commandOf), inserted: false }
        }
        const rows: CommandRow[] = []
        for (let i = 0; i < drafts.length; i += INSERT_CHUNK) {
          rows.push(...await trx('commands').insert(drafts.slice(i, i + INSERT_CHUNK).map(asRow)).returning('*') as CommandRow[])
        }
        return { batch: batchOf(created), commands: rows.map(commandOf), inserted: true }
      })
    },

    async find (id) {
      const row = await commands().where({ id }).first() as CommandRow | undefined
      return row === undefined ? undefined : commandOf(row)
    },

    async listForDevice (serial, { state, before, limit }) {
      const query = newestFirst(commands().where({ serial }), 'issued_at', before, limit)
      if (state !== undefined) query.where({ state })
      return (await query as CommandRow[]).map(commandOf)
    },

    takeDeliverable: (serial, now, onlyQueued = false) => takeDeliverable({ serial, now, onlyQueued }),

    async serialsWithQueued (now) {
      return (await commands().distinct('serial').where({ state: 'queued' }).where('expires_at', '>', now) as Array<{ serial: string }>).map(row => row.serial)
    },

    async complete (serial, id, reply, at) {
      const [row] = await commands().where({ id, serial }).whereIn('state', OPEN).where('expires_at', '>', at)
        .update({
          state: reply.state,
          result: reply.result === null ? null : JSON.stringify(reply.result),
          error: reply.error,
          completed_at: at,
          round_trip_ms: knex.raw('CASE WHEN sent_at IS NULL THEN NULL ELSE extract(epoch FROM (?::timestamptz - sent_at)) * 1000 END', [at.toISOString()])
        } as never).returning('*') as CommandRow[]
      if (row !== undefined) return { completed: true, command: commandOf(row) }
      const existing = await commands().where({ id, serial }).first('state', 'expires_at') as { state: CommandState, expires_at: Date } | undefined
      // open but past its expiry (the sweep runs once a second): it expired before the answer came
      const expired = existing !== undefined && OPEN.includes(existing.state) && new Date(existing.expires_at) <= at
      return { completed: false, state: expired ? 'expired' : existing?.state }
    },

    async expire (now) {
      const rows = await commands().whereIn('state', OPEN).where('expires_at', '<=', now)
        .update({ state: 'expired', completed_at: now }).returning('id')
      return rows.length
    },

    async findBatch (id) {
      const batch = await knex('command_batches').where({ id }).first() as CommandBatch | undefined
      if (batch === undefined) return undefined
      const counted = await commands().where({ batch_id: id }).groupBy('state').select('state').count({ count: '*' }) as Array<{ state: CommandState, count: string | number }>
      const states = Object.fromEntries(COMMAND_STATES.map(state => [state, 0])) as BatchCounts['states']
      for (const { state, count } of counted) states[state] = Number(count)
      return { ...batchOf(batch), total: Object.values(states).reduce((sum, n) => sum + n, 0), states }
    }
  }
}
