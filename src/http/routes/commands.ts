// Commands (contract §4): issue one to a device or to every member of a group (202, with an
// optional Idempotency-Key), read one, page through a device's, and count a group fan-out by state.
import type { FastifyPluginAsync, FastifyReply } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type, type Static } from 'typebox'
import type { Commands, GroupIssueResult, IssueResult } from '../../commands/commands.js'
import { MAX_TTL_SECONDS } from '../../commands/command-request.js'
import { COMMAND_NAMES, COMMAND_STATES, type Command } from '../../commands/types.js'
import { ApiError, notFound } from '../api-errors.js'
import { IdParams, PageQuery, Serial, SerialParams, errors, pageSchema } from '../schemas.js'

const State = Type.Union([Type.Literal('queued'), Type.Literal('sent'), Type.Literal('ok'), Type.Literal('error'), Type.Literal('expired')])

export const CommandView = Type.Object({
  id: Type.String({ format: 'uuid' }),
  serial: Serial,
  command: Type.String(),
  payload: Type.Record(Type.String(), Type.Unknown()),
  state: State,
  result: Type.Optional(Type.Unknown({ description: 'the device\'s result (state ok)' })),
  error: Type.Optional(Type.String({ description: 'the device\'s error (state error)' })),
  issued_at: Type.String({ format: 'date-time' }),
  expires_at: Type.String({ format: 'date-time' }),
  sent_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'the latest delivery to the device' }),
  completed_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()], { description: 'when it became ok, error or expired' }),
  round_trip_ms: Type.Union([Type.Number(), Type.Null()], { description: 'from the latest delivery to the reply' }),
  batch_id: Type.Union([Type.String({ format: 'uuid' }), Type.Null()], { description: 'the group fan-out it belongs to' })
}, { $id: 'Command' })

const CommandBody = Type.Object({
  command: Type.Union([Type.Literal('reboot'), Type.Literal('identify'), Type.Literal('ping'), Type.Literal('update')], { description: COMMAND_NAMES.join(', ') }),
  payload: Type.Optional(Type.Record(Type.String(), Type.Unknown(), {
    description: 'ping: {echo?}; identify: {duration_seconds?: 1–3600}; reboot: {}; update: the update payload of contract §3'
  })),
  ttl_seconds: Type.Optional(Type.Integer({ minimum: 1, maximum: MAX_TTL_SECONDS, description: 'default 86400; never delivered after it' }))
}, { additionalProperties: false })

const IdempotencyHeaders = Type.Object({
  'idempotency-key': Type.Optional(Type.String({ minLength: 1, maxLength: 200, pattern: '^[\\x21-\\x7e]+$', description: 'a retry with the same key answers the same command(s)' }))
})

const BatchCounts = Type.Object({
  total: Type.Integer(),
  states: Type.Object({ queued: Type.Integer(), sent: Type.Integer(), ok: Type.Integer(), error: Type.Integer(), expired: Type.Integer() })
})

const GroupIssueAnswer = Type.Object({
  batch_id: Type.String({ format: 'uuid' }),
  group_id: Type.Integer(),
  command: Type.String(),
  ids: Type.Array(Type.String({ format: 'uuid' }), { description: 'one command per member, in the order of `commands`' }),
  commands: Type.Array(Type.Object({ serial: Serial, id: Type.String({ format: 'uuid' }), state: State })),
  skipped: Type.Array(Type.Object({ serial: Serial, reason: Type.Literal('revoked') })),
  ...BatchCounts.properties
})

const BatchView = Type.Object({
  batch_id: Type.String({ format: 'uuid' }),
  group_id: Type.Integer(),
  command: Type.String(),
  payload: Type.Record(Type.String(), Type.Unknown()),
  issued_at: Type.String({ format: 'date-time' }),
  expires_at: Type.String({ format: 'date-time' }),
  ...BatchCounts.properties
})

const CommandIdParams = Type.Object({ id: Type.String({ format: 'uuid' }) })
const BatchParams = Type.Object({ ...IdParams.properties, batch_id: Type.String({ format: 'uuid' }) })
const ListQuery = Type.Object({ state: Type.Optional(State), ...PageQuery }, { additionalProperties: false })

const iso = (date: Date | null): string | null => date === null ? null : date.toISOString()

export function commandView (command: Command): Static<typeof CommandView> {
  return {
    id: command.id,
    serial: command.serial,
    command: command.command,
    payload: command.payload,
    state: command.state,
    ...(command.result === null ? {} : { result: command.result }),
    ...(command.error === null ? {} : { error: command.error }),
    issued_at: command.issued_at.toISOString(),
    expires_at: command.expires_at.toISOString(),
    sent_at: iso(command.sent_at),
    completed_at: iso(command.completed_at),
    round_trip_ms: command.round_trip_ms,
    batch_id: command.batch_id
  }
}

function refusal (result: Exclude<IssueResult | GroupIssueResult, { ok: true }>, what: string): ApiError {
  switch (result.reason) {
    case 'invalid': return new ApiError('invalid_request', result.message, result.field)
    case 'not_found': return notFound(what)
    case 'revoked': return new ApiError('conflict', `${what} is revoked; unrevoke it before sending it commands`)
    case 'idempotency_conflict': return new ApiError('conflict', 'this Idempotency-Key was used for a different request; use a new key', 'Idempotency-Key')
  }
}

const accepted = (reply: FastifyReply, replayed: boolean): FastifyReply => {
  if (replayed) void reply.header('idempotent-replayed', 'true')
  return reply.status(202)
}

export function commandRoutes (deps: { commands: Commands }): FastifyPluginAsync {
  const { commands } = deps
  return async (plain) => {
    const app = plain.withTypeProvider<TypeBoxTypeProvider>()
    const tags = ['commands']

    app.post('/api/devices/:serial/commands', {
      schema: {
        summary: 'Send a command to a device (sent now if it is connected, queued until it connects otherwise)',
        tags, params: SerialParams, headers: IdempotencyHeaders, body: CommandBody, response: { 202: CommandView, ...errors(400, 401, 404, 409) }
      }
    }, async (request, reply) => {
      const { serial } = request.params
      const result = await commands.issue(serial, request.body, request.headers['idempotency-key'])
      if (!result.ok) throw refusal(result, `device ${serial}`)
      return await accepted(reply, result.replayed).send(commandView(result.command))
    })

    app.get('/api/commands/:id', {
      schema: { summary: 'One command: state, result, timestamps', tags, params: CommandIdParams, response: { 200: CommandView, ...errors(400, 401, 404) } }
    }, async (request) => {
      const command = await commands.get(request.params.id)
      if (command === undefined) throw notFound(`command ${request.params.id}`)
      return commandView(command)
    })

    app.get('/api/devices/:serial/commands', {
      schema: { summary: 'A device\'s commands, newest first', tags, params: SerialParams, querystring: ListQuery, response: { 200: pageSchema(CommandView), ...errors(400, 401, 404) } }
    }, async (request) => {
      const { limit = 100, cursor, state } = request.query
      const page = await commands.listForDevice(request.params.serial, { state, cursor, limit })
      if (page.items.length === 0 && cursor === undefined && !await commands.deviceExists(request.params.serial)) throw notFound(`device ${request.params.serial}`)
      return { items: page.items.map(commandView), next_cursor: page.next_cursor }
    })

    app.post('/api/groups/:id/commands', {
      schema: {
        summary: 'Send a command to every member of a group (queued for the offline ones, revoked ones skipped)',
        tags, params: IdParams, headers: IdempotencyHeaders, body: CommandBody, response: { 202: GroupIssueAnswer, ...errors(400, 401, 404, 409) }
      }
    }, async (request, reply) => {
      const { id } = request.params
      const result = await commands.issueToGroup(id, request.body, request.headers['idempotency-key'])
      if (!result.ok) throw refusal(result, `group ${id}`)
      const states = Object.fromEntries(COMMAND_STATES.map(state => [state, result.commands.filter(command => command.state === state).length])) as Static<typeof BatchCounts>['states']
      return await accepted(reply, result.replayed).send({
        batch_id: result.batch.id,
        group_id: id,
        command: result.batch.command,
        ids: result.commands.map(command => command.id),
        commands: result.commands.map(({ serial, id, state }) => ({ serial, id, state })),
        skipped: result.skipped,
        total: result.commands.length,
        states
      })
    })

    app.get('/api/groups/:id/commands/:batch_id', {
      schema: { summary: 'A group fan-out: its commands counted by state', tags, params: BatchParams, response: { 200: BatchView, ...errors(400, 401, 404) } }
    }, async (request) => {
      const { id, batch_id: batchId } = request.params
      const batch = await commands.batch(id, batchId)
      if (batch === undefined) throw notFound(`command fan-out ${batchId} of group ${id}`)
      return {
        batch_id: batch.id, group_id: id, command: batch.command, payload: batch.payload,
        issued_at: batch.issued_at.toISOString(), expires_at: batch.expires_at.toISOString(), total: batch.total, states: batch.states
      }
    })
  }
}
