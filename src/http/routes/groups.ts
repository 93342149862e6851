// /api/groups: list (cursor paging, member counts), create, read, rename or describe, delete, and
// membership (add devices by serial, remove one).
import type { FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type, type Static } from 'typebox'
import { GROUP_NAME_MAX, type Group, type Groups } from '../../groups/groups.js'
import { ApiError, notFound } from '../api-errors.js'
import { IdParams, PageQuery, Serial, errors, pageSchema } from '../schemas.js'

export const GroupView = Type.Object({
  id: Type.Integer(),
  name: Type.String(),
  description: Type.Union([Type.String(), Type.Null()]),
  device_count: Type.Integer({ description: 'devices in the group' }),
  inserted_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' })
}, { $id: 'Group' })

const Name = Type.String({ minLength: 1, maxLength: GROUP_NAME_MAX, description: 'unique; trimmed; no control characters' })
const Description = Type.Union([Type.String({ maxLength: 1024 }), Type.Null()])

const GroupCreate = Type.Object({ name: Name, description: Type.Optional(Description) }, { additionalProperties: false })
const GroupPatch = Type.Object({ name: Type.Optional(Name), description: Type.Optional(Description) }, { additionalProperties: false, minProperties: 1 })
const ListQuery = Type.Object({ ...PageQuery }, { additionalProperties: false })
const MembersBody = Type.Object({
  serials: Type.Array(Serial, { minItems: 1, maxItems: 1000, description: 'devices to put in the group (moved from any other group)' })
}, { additionalProperties: false })
const MembersAnswer = Type.Object({
  group: GroupView,
  added: Type.Integer({ description: 'devices that were not in the group before' })
})
const MemberParams = Type.Object({ ...IdParams.properties, serial: Serial })

export function groupView (group: Group): Static<typeof GroupView> {
  return { ...group, inserted_at: group.inserted_at.toISOString(), updated_at: group.updated_at.toISOString() }
}

const invalidName = (): ApiError => new ApiError('invalid_request', `name must be 1–${GROUP_NAME_MAX} characters (trimmed) without control characters`, 'name')
const nameTaken = (name: string): ApiError => new ApiError('conflict', `a group named ${JSON.stringify(name.trim())} already exists`, 'name')

/** Unknown serials, named in the message (the first 20 of them). */
function unknownSerials (serials: string[]): ApiError {
  const named = serials.slice(0, 20).join(', ') + (serials.length > 20 ? ` and ${serials.length - 20} more` : '')
  return new ApiError('invalid_request', `no device with serial ${named}; no device was added`, 'serials')
}

export function groupRoutes (deps: { groups: Groups }): FastifyPluginAsync {
  const { groups } = deps
  return async (plain) => {
    const app = plain.withTypeProvider<TypeBoxTypeProvider>()
    const tags = ['groups']

    async function existing (id: number): Promise<Group> {
      const group = await groups.get(id)
      if (group === undefined) throw notFound(`group ${id}`)
      return group
    }

    app.get('/api/groups', {
      schema: { summary: 'List groups (by name) with their member counts', tags, querystring: ListQuery, response: { 200: pageSchema(GroupView), ...errors(400, 401) } }
    }, async (request) => {
      const { limit = 100, cursor } = request.query
      const page = await groups.list({ cursor, limit })
      return { items: page.items.map(groupView), next_cursor: page.next_cursor }
    })

    app.post('/api/groups', {
      schema: { summary: 'Create a group', tags, body: GroupCreate, response: { 201: GroupView, ...errors(400, 401, 409) } }
    }, async (request, reply) => {
      const result = await groups.create(request.body)
      if (result.ok) return await reply.status(201).send(groupView(result.group))
      if (result.reason === 'name_taken') throw nameTaken(request.body.name)
      throw invalidName()
    })

    app.get('/api/groups/:id', {
      schema: { summary: 'One group', tags, params: IdParams, response: { 200: GroupView, ...errors(400, 401, 404) } }
    }, async (request) => groupView(await existing(request.params.id)))

    app.patch('/api/groups/:id', {
      schema: { summary: 'Rename a group or change its description', tags, params: IdParams, body: GroupPatch, response: { 200: GroupView, ...errors(400, 401, 404, 409) } }
    }, async (request) => {
      const result = await groups.update(request.params.id, request.body)
      if (result.ok) return groupView(result.group)
      if (result.reason === 'name_taken') throw nameTaken(request.body.name ?? '')
      if (result.reason === 'invalid_name') throw invalidName()
      throw notFound(`group ${request.params.id}`)
    })

    app.delete('/api/groups/:id', {
      schema: { summary: 'Delete a group (its devices become ungrouped)', tags, params: IdParams, response: { 204: Type.Null(), ...errors(400, 401, 404) } }
    }, async (request, reply) => {
      if (!await groups.remove(request.params.id)) throw notFound(`group ${request.params.id}`)
      return await reply.status(204).send(null)
    })

    app.post('/api/groups/:id/devices', {
      schema: {
        summary: 'Put devices in the group (all or none: unknown serials change nothing)',
        tags, params: IdParams, body: MembersBody, response: { 200: MembersAnswer, ...errors(400, 401, 404) }
      }
    }, async (request) => {
      const result = await groups.addDevices(request.params.id, request.body.serials)
      if (!result.ok) throw result.reason === 'not_found' ? notFound(`group ${request.params.id}`) : unknownSerials(result.serials)
      return { group: groupView(await existing(request.params.id)), added: result.added }
    })

    app.delete('/api/groups/:id/devices/:serial', {
      schema: { summary: 'Take a device out of the group', tags, params: MemberParams, response: { 204: Type.Null(), ...errors(400, 401, 404) } }
    }, async (request, reply) => {
      const { id, serial } = request.params
      if (!await groups.removeDevice(id, serial)) {
        await existing(id)
        throw new ApiError('not_found', `device ${serial} is not in group ${id}`)
      }
      return await reply.status(204).send(null)
    })
  }
}
