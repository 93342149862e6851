// OTA updates (contract §4): start one on a device or on every member of a group (202), read one,
// page through a device's, and count a group rollout by state.
import type { FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type, type Static } from 'typebox'
import { MAX_TTL_SECONDS } from '../../commands/command-request.js'
import { describeRefusal, type StartRefusal, type Updates } from '../../firmware/updates.js'
import type { Update } from '../../firmware/types.js'
import { ApiError, notFound } from '../api-errors.js'
import { IdParams, PageQuery, Serial, SerialParams, Timestamp, errors, pageSchema } from '../schemas.js'

const State = Type.Union([Type.Literal('pending'), Type.Literal('downloading'), Type.Literal('applying'), Type.Literal('complete'), Type.Literal('failed')])
const StateCounts = Type.Object({
  pending: Type.Integer(), downloading: Type.Integer(), applying: Type.Integer(), complete: Type.Integer(), failed: Type.Integer()
})

export const UpdateView = Type.Object({
  id: Type.String({ format: 'uuid' }),
  serial: Serial,
  firmware_id: Type.Union([Type.String({ format: 'uuid' }), Type.Null()], { description: 'null once the firmware was deleted' }),
  version: Type.String(),
  target: Type.String(),
  sha256: Type.String(),
  size: Type.Integer(),
  previous_version: Type.Union([Type.String(), Type.Null()], { description: 'the device\'s firmware_version when the update started' }),
  state: State,
  progress: Type.Union([Type.Integer({ minimum: 0, maximum: 100 }), Type.Null()]),
  error: Type.Union([Type.String(), Type.Null()]),
  failure_reason: Type.Union([Type.Literal('device'), Type.Literal('timeout'), Type.Literal('reverted'), Type.Literal('superseded'), Type.Null()], {
    description: 'device: it reported failed; timeout: no progress (another stage or a higher progress) for UPDATE_STAGE_TIMEOUT while downloading or applying, or not started before expires_at; reverted: it came back on the old version after applying; superseded: a forced update replaced it'
  }),
  command_id: Type.Union([Type.String({ format: 'uuid' }), Type.Null()], { description: 'the update command that carried the offer' }),
  rollout_id: Type.Union([Type.String({ format: 'uuid' }), Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
  expires_at: Type.String({ format: 'date-time', description: 'a pending update not started by then fails' }),
  status_at: Type.String({ format: 'date-time', description: 'the latest progress: a state change or a higher progress (the stage timeout counts from it); a report repeating the same state and progress leaves it' }),
  downloading_at: Timestamp,
  applying_at: Timestamp,
  completed_at: Timestamp
}, { $id: 'Update' })

const UpdateBody = Type.Object({
  firmware_id: Type.String({ format: 'uuid' }),
  force: Type.Optional(Type.Boolean({ description: 'start even if the device reports another firmware_target, replacing an update in progress' })),
  ttl_seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_TTL_SECONDS, description: 'how long the offer waits for an offline device (default 604800)' }))
}, { additionalProperties: false })

const RolloutView = Type.Object({
  rollout_id: Type.String({ format: 'uuid' }),
  group_id: Type.Integer(),
  firmware_id: Type.Union([Type.String({ format: 'uuid' }), Type.Null()]),
  version: Type.String(),
  created_at: Type.String({ format: 'date-time' }),
  total: Type.Integer(),
  states: StateCounts
})

const GroupStartAnswer = Type.Object({
  ...RolloutView.properties,
  ids: Type.Array(Type.String({ format: 'uuid' }), { description: 'one update per member started, in the order of `updates`' }),
  updates: Type.Array(Type.Object({ serial: Serial, id: Type.String({ format: 'uuid' }), state: State })),
  skipped: Type.Array(Type.Object({ serial: Serial, reason: Type.String(), message: Type.String() }), { description: 'members not updated: revoked, target_mismatch, update_in_progress' })
})

const UpdateParams = Type.Object({ id: Type.String({ format: 'uuid' }) })
const RolloutParams = Type.Object({ ...IdParams.properties, rollout_id: Type.String({ format: 'uuid' }) })
const iso = (date: Date | null): string | null => date === null ? null : date.toISOString()

export function updateView (update: Update): Static<typeof UpdateView> {
  return {
    ...update,
    created_at: update.created_at.toISOString(),
    expires_at: update.expires_at.toISOString(),
    status_at: update.status_at.toISOString(),
    downloading_at: iso(update.downloading_at),
    applying_at: iso(update.applying_at),
    completed_at: iso(update.completed_at)
  }
}

function refusal (result: StartRefusal, what: string): ApiError {
  const message = describeRefusal(result, what)
  switch (result.reason) {
    case 'invalid': return new ApiError('invalid_request', message, result.field)
    case 'firmware_not_found': return new ApiError('not_found', `firmware not found: upload it first (POST /api/firmware)`, 'firmware_id')
    case 'not_found': return notFound(what)
    default: return new ApiError('conflict', message, result.reason === 'target_mismatch' ? 'firmware_id' : undefined)
  }
}

export function updateRoutes (deps: { updates: Updates }): FastifyPluginAsync {
  const { updates } = deps
  return async (plain) => {
    const app = plain.withTypeProvider<TypeBoxTypeProvider>()
    const tags = ['updates']

    app.post('/api/devices/:serial/update', {
      schema: {
        summary: 'Start an OTA update of a device (offered now if it is connected, on its next connect otherwise)',
        tags, params: SerialParams, body: UpdateBody, response: { 202: UpdateView, ...errors(400, 401, 404, 409) }
      }
    }, async (request, reply) => {
      const result = await updates.start(request.params.serial, request.body)
      if (!result.ok) throw refusal(result, `device ${request.params.serial}`)
      return await reply.status(202).send(updateView(result.update))
    })

    app.post('/api/groups/:id/update', {
      schema: {
        summary: 'Start an OTA update on every member of a group; members it cannot start on are listed as skipped',
        tags, params: IdParams, body: UpdateBody, response: { 202: GroupStartAnswer, ...errors(400, 401, 404) }
      }
    }, async (request, reply) => {
      const { id } = request.params
      const result = await updates.startForGroup(id, request.body)
      if (!result.ok) throw refusal(result, `group ${id}`)
      const counts = await updates.rollout(id, result.rollout.id)
      return await reply.status(202).send({
        rollout_id: result.rollout.id, group_id: id, firmware_id: result.rollout.firmware_id, version: result.rollout.version,
        created_at: result.rollout.created_at.toISOString(), total: counts!.total, states: counts!.states,
        ids: result.updates.map(update => update.id),
        updates: result.updates.map(({ serial, id, state }) => ({ serial, id, state })),
        skipped: result.skipped
      })
    })

    app.get('/api/updates/:id', {
      schema: { summary: 'One update: state, progress, stage timestamps, error', tags, params: UpdateParams, response: { 200: UpdateView, ...errors(400, 401, 404) } }
    }, async (request) => {
      const update = await updates.get(request.params.id)
      if (update === undefined) throw notFound(`update ${request.params.id}`)
      return updateView(update)
    })

    app.get('/api/devices/:serial/updates', {
      schema: { summary: 'A device\'s updates, newest first', tags, params: SerialParams, querystring: Type.Object(PageQuery, { additionalProperties: false }), response: { 200: pageSchema(UpdateView), ...errors(400, 401, 404) } }
    }, async (request) => {
      const { limit = 100, cursor } = request.query
      const page = await updates.listForDevice(request.params.serial, { cursor, limit })
      if (page.items.length === 0 && cursor === undefined && !await updates.deviceExists(request.params.serial)) throw notFound(`device ${request.params.serial}`)
      return { items: page.items.map(updateView), next_cursor: page.next_cursor }
    })

    app.get('/api/groups/:id/updates/:rollout_id', {
      schema: { summary: 'A group rollout: its updates counted by state', tags, params: RolloutParams, response: { 200: RolloutView, ...errors(400, 401, 404) } }
    }, async (request) => {
      const { id, rollout_id: rolloutId } = request.params
      const rollout = await updates.rollout(id, rolloutId)
      if (rollout === undefined) throw notFound(`rollout ${rolloutId} of group ${id}`)
      return {
        rollout_id: rollout.id, group_id: id, firmware_id: rollout.firmware_id, version: rollout.version,
        created_at: rollout.created_at.toISOString(), total: rollout.total, states: rollout.states
      }
    })
  }
}
