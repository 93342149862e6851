// knex implementation of the firmware and update repositories. Every statement runs unchanged on
// PostgreSQL 15 and on PGlite.
import type { Knex } from 'knex'
import { createBatcher } from '../../batcher.js'
import { newestFirst } from './keyset.js'
import {
  ACTIVE_UPDATE_STATES, FirmwareGone, UPDATE_STATES, type Firmware, type FirmwareRepository, type Rollout, type RolloutCounts, type Update, type UpdateRepository
} from '../../firmware/types.js'

const UNIQUE_VIOLATION = '23505'
const INSERT_CHUNK = 1000

type FirmwareRow = Omit<Firmware, 'size'> & { size: number | string }
type UpdateRow = Omit<Update, 'size'> & { size: number | string }

const firmwareOf = (row: FirmwareRow): Firmware => ({ ...row, size: Number(row.size) })
const updateOf = (row: UpdateRow): Update => ({ ...row, size: Number(row.size) })
const isUniqueViolation = (error: unknown): boolean => (error as { code?: string }).code === UNIQUE_VIOLATION
const FOREIGN_KEY_VIOLATION = '23503'

/** Runs `write`; a foreign key violation on firmware_id (the firmware deleted since it was read) becomes FirmwareGone. */
async function unlessFirmwareGone<T> (write: () => Promise<T>): Promise<T> {
  try {
    return await write()
  } catch (error) {
    const { code, constraint } = error as { code?: string, constraint?: string }
    if (code === FOREIGN_KEY_VIOLATION && constraint?.includes('firmware_id') === true) throw new FirmwareGone()
    throw error
  }
}

export function createFirmwareRepository (knex: Knex): FirmwareRepository {
  const firmware = () => knex<FirmwareRow>('firmware')
  return {
    async insert (record) {
      try {
        await firmware().insert(record)
        return true
      } catch (error) {
        if (isUniqueViolation(error)) return false
        throw error
      }
    },

    async find (id) {
      const row = await firmware().where({ id }).first() as FirmwareRow | undefined
      return row === undefined ? undefined : firmwareOf(row)
    },

    async findDuplicate (meta, sha256) {
      const row = await firmware()
        .where(query => {
          void query.where({ target: meta.target, version: meta.version }).whereRaw("coalesce(application, '') = ?", [meta.application ?? ''])
          if (sha256 !== undefined) void query.orWhere({ sha256 })
        })
        .orderByRaw('sha256 = ? desc', [sha256 ?? '']).first() as FirmwareRow | undefined
      return row === undefined ? undefined : firmwareOf(row)
    },

    async list ({ target, before, limit }) {
      const query = newestFirst(firmware(), 'created_at', before, limit)
      if (target !== undefined) void query.where({ target })
      return (await query as FirmwareRow[]).map(firmwareOf)
    },

    async delete (id) {
      return await knex.transaction(async (trx) => {
        const row = await trx('firmware').where({ id }).forUpdate().first('id')
        if (row === undefined) return 'not_found'
        const active = await trx('updates').where({ firmware_id: id }).whereIn('state', ACTIVE_UPDATE_STATES).first('id')
        if (active !== undefined) return 'in_use'
        await trx('firmware').where({ id }).delete()
        return 'deleted'
      })
    }
  }
}

export function createUpdateRepository (knex: Knex): UpdateRepository {
  const updates = () => knex<UpdateRow>('updates')
  // asked for every device that subscribes to its firmware topic: one statement per connect-storm window
  // (a device has at most one update in progress: a unique index)
  async function findActiveMany (serials: readonly string[]): Promise<Update[]> {
    const rows: UpdateRow[] = []
    for (let i = 0; i < serials.length; i += INSERT_CHUNK) {
      rows.push(...await updates().whereIn('serial', serials.slice(i, i + INSERT_CHUNK)).whereIn('state', ACTIVE_UPDATE_STATES) as UpdateRow[])
    }
    return rows.map(updateOf)
  }
  const findActive = createBatcher(async (serials: string[]) => {
    const bySerial = new Map((await findActiveMany([...new Set(serials)])).map(update => [update.serial, update]))
    return serials.map(serial => bySerial.get(serial))
  })
  return {
    async insertMany (drafts, { supersede, at }) {
      return await unlessFirmwareGone(() => knex.transaction(async (trx) => {
        const superseded: UpdateRow[] = []
        const inserted: UpdateRow[] = []
        for (let i = 0; i < drafts.length; i += INSERT_CHUNK) {
          const chunk = drafts.slice(i, i + INSERT_CHUNK)
          if (supersede) {
            const result = await trx.raw(`UPDATE updates SET state = 'failed', failure_reason = 'superseded', error = 'superseded by update ' || v.id,
                completed_at = ?, status_at = ?
              FROM unnest(?::text[], ?::uuid[]) AS v(serial, id)
              WHERE updates.serial = v.serial AND updates.state IN ('pending', 'downloading', 'applying') RETURNING updates.*`,
            [at, at, chunk.map(draft => draft.serial), chunk.map(draft => draft.id)]) as { rows: UpdateRow[] }
            superseded.push(...result.rows)
          }
          inserted.push(...await trx('updates').insert(chunk.map(draft => ({ ...draft, state: 'pending', status_at: at })))
            .onConflict(knex.raw("(serial) WHERE state IN ('pending', 'downloading', 'applying')")).ignore().returning('*') as UpdateRow[])
        }
        return { inserted: inserted.map(updateOf), superseded: superseded.map(updateOf) }
      }))
    },

    async setCommands (pairs) {
      for (let i = 0; i < pairs.length; i += INSERT_CHUNK) {
        const chunk = pairs.slice(i, i + INSERT_CHUNK)
        await knex.raw('UPDATE updates SET command_id = v.command_id FROM unnest(?::uuid[], ?::uuid[]) AS v(id, command_id) WHERE updates.id = v.id',
          [chunk.map(pair => pair.id), chunk.map(pair => pair.commandId)])
      }
    },

    async find (id) {
      const row = await updates().where({ id }).first() as UpdateRow | undefined
      return row === undefined ? undefined : updateOf(row)
    },

    findActive: serial => findActive(serial),
    findActiveMany,

    async listForDevice (serial, { before, limit }) {
      const query = newestFirst(updates().where({ serial }), 'created_at', before, limit)
      return (await query as UpdateRow[]).map(updateOf)
    },

    async report (serial, id, change, at) {
      const finished = change.state === 'complete' || change.state === 'failed'
      // stages only move forward: a report of an earlier stage would escape the stage timeout
      const from = finished ? ACTIVE_UPDATE_STATES : ACTIVE_UPDATE_STATES.slice(0, ACTIVE_UPDATE_STATES.indexOf(change.state) + 1)
      const [row] = await updates().where({ id, serial }).whereIn('state', from)
        .update({
          state: change.state,
          // within a stage progress only grows (a device flipping between 39 and 40 % makes no progress)
          progress: change.state === 'complete' ? 100 : change.progress === null ? knex.raw('progress')
            : knex.raw('CASE WHEN state = ?::text THEN greatest(coalesce(progress, 0), ?::integer) ELSE ?::integer END', [change.state, change.progress, change.progress]),
          error: change.error,
          failure_reason: change.failure_reason,
          // the stage timeout's clock: restarted only by progress (another stage, or a higher progress),
          // so a device re-reporting the same progress forever still times out
          status_at: knex.raw('CASE WHEN state <> ?::text OR coalesce(progress, -1) < ?::integer THEN ?::timestamptz ELSE status_at END',
            [change.state, change.progress ?? -1, at.toISOString()]),
          downloading_at: change.state === 'downloading' ? knex.raw('coalesce(downloading_at, ?::timestamptz)', [at.toISOString()]) : knex.raw('downloading_at'),
          applying_at: change.state === 'applying' ? knex.raw('coalesce(applying_at, ?::timestamptz)', [at.toISOString()]) : knex.raw('applying_at'),
          completed_at: finished ? at : null
        } as never).returning('*') as UpdateRow[]
      return row === undefined ? undefined : updateOf(row)
    },

    async failStale (stalledSince, now) {
      // status_at moves only on progress (see report), so this is the time since the last progress
      const rows = await updates()
        .where(query => {
          void query.where(q => { void q.whereIn('state', ['downloading', 'applying']).where('status_at', '<', stalledSince) })
            .orWhere(q => { void q.where({ state: 'pending' }).where('expires_at', '<=', now) })
        })
        .update({
          state: 'failed',
          failure_reason: 'timeout',
          error: knex.raw("CASE WHEN state = 'pending' THEN 'the device did not start the update before it expired' ELSE 'no progress from the device while ' || state || ' for too long (UPDATE_STAGE_TIMEOUT)' END"),
          completed_at: now,
          status_at: now
        } as never).returning('*') as UpdateRow[]
      return rows.map(updateOf)
    },

    async insertRollout (rollout: Rollout) {
      await unlessFirmwareGone(() => knex('update_rollouts').insert(rollout))
    },

    async findRollout (id) {
      const rollout = await knex('update_rollouts').where({ id }).first() as (Rollout & { group_id: number | string | null }) | undefined
      if (rollout === undefined) return undefined
      const counted = await updates().where({ rollout_id: id }).groupBy('state').select('state').count({ count: '*' }) as Array<{ state: Update['state'], count: string | number }>
      const states = Object.fromEntries(UPDATE_STATES.map(state => [state, 0])) as RolloutCounts['states']
      for (const { state, count } of counted) states[state] = Number(count)
      return { ...rollout, group_id: rollout.group_id === null ? null : Number(rollout.group_id), total: Object.values(states).reduce((sum, n) => sum + n, 0), states }
    }
  }
}
