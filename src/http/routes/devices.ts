// /api/devices: list (filters + cursor paging), read, change, delete, revoke and restore.
import type { FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type, type Static } from 'typebox'
import type { DeviceAdmin } from '../../devices/device-admin.js'
import type { Device } from '../../devices/types.js'
import { ApiError, notFound } from '../api-errors.js'
import { Metadata, PageQuery, SerialParams, Timestamp, errors, pageSchema } from '../schemas.js'

export const DeviceView = Type.Object({
  serial: Type.String(),
  nickname: Type.Union([Type.String(), Type.Null()]),
  status: Type.Union([Type.Literal('online'), Type.Literal('offline')]),
  last_seen_at: Timestamp,
  connected_at: Timestamp,
  disconnected_at: Timestamp,
  disconnect_reason: Type.Union([Type.String(), Type.Null()], { description: 'clean, lost, revoked, taken_over or server_shutdown' }),
  node_id: Type.Union([Type.String(), Type.Null()], { description: 'the Shepherd node holding the connection' }),
  revoked: Type.Boolean(),
  cert_fingerprint: Type.Union([Type.String(), Type.Null()], { description: 'SHA-256 of the certificate DER, hex' }),
  cert_not_after: Timestamp,
  firmware_version: Type.Union([Type.String(), Type.Null()]),
  firmware_target: Type.Union([Type.String(), Type.Null()]),
  firmware_uuid: Type.Union([Type.String(), Type.Null()]),
  metadata: Metadata,
  group_id: Type.Union([Type.Integer(), Type.Null()]),
  inserted_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  latest_metrics: Type.Optional(Type.Record(Type.String(), Type.Object({
    value: Type.Number(),
    unit: Type.Union([Type.String(), Type.Null()]),
    recorded_at: Type.String({ format: 'date-time' })
  }), { description: 'the latest stored value of each metric (GET of one device only; needs the postgres metrics handler)' }))
}, { $id: 'Device' })

const Nickname = Type.Union([Type.String({ minLength: 1, maxLength: 128 }), Type.Null()])
const GROUP_ID = { minimum: 1, maximum: Number.MAX_SAFE_INTEGER }
const GroupId = Type.Union([Type.Integer(GROUP_ID), Type.Null()])

const ListQuery = Type.Object({
  status: Type.Optional(Type.Union([Type.Literal('online'), Type.Literal('offline')])),
  group_id: Type.Optional(Type.Integer(GROUP_ID)),
  firmware_version: Type.Optional(Type.String({ maxLength: 256 })),
  revoked: Type.Optional(Type.Boolean()),
  q: Type.Optional(Type.String({ minLength: 1, maxLength: 128, description: 'part of the serial or nickname, case-insensitive' })),
  ...PageQuery
}, { additionalProperties: false })

const DevicePatch = Type.Object({
  nickname: Type.Optional(Nickname),
  group_id: Type.Optional(GroupId),
  // keys checked with propertyNames: Type.Record's key schema compiles to a pattern that drops maxLength
  metadata: Type.Optional(Type.Unsafe<Record<string, unknown>>({ type: 'object', propertyNames: { minLength: 1, maxLength: 128 }, description: 'merged into the metadata; a key set to null is removed (keys: 1–128 characters)' }))
}, { additionalProperties: false, minProperties: 1 })

const iso = (date: Date | null): string | null => date === null ? null : date.toISOString()

/** A device as the API shows it: the registry row without internal keys. */
export function deviceView ({ id: _id, connection_id: _connection, ...device }: Device): Static<typeof DeviceView> {
  return {
    ...device,
    group_id: device.group_id === null ? null : Number(device.group_id), // bigint columns arrive as strings
    last_seen_at: iso(device.last_seen_at),
    connected_at: iso(device.connected_at),
    disconnected_at: iso(device.disconnected_at),
    cert_not_after: iso(device.cert_not_after),
    inserted_at: device.inserted_at.toISOString(),
    updated_at: device.updated_at.toISOString()
  }
}

export interface LatestMetricValue { value: number, unit: string | null, recorded_at: Date }

export function deviceRoutes (deps: { devices: DeviceAdmin, latestMetrics?: (serial: string) => Promise<Record<string, LatestMetricValue>> }): FastifyPluginAsync {
  const { devices, latestMetrics } = deps
  return async (plain) => {
    const app = plain.withTypeProvider<TypeBoxTypeProvider>()
    const tags = ['devices']

    async function existing (serial: string): Promise<Device> {
      const device = await devices.get(serial)
      if (device === undefined) throw notFound(`device ${serial}`)
      return device
    }

    app.get('/api/devices', {
      schema: { summary: 'List devices', tags, querystring: ListQuery, response: { 200: pageSchema(DeviceView), ...errors(400, 401) } }
    }, async (request) => {
      const { limit = 100, cursor, ...filter } = request.query
      const page = await devices.list(filter, { cursor, limit })
      return { items: page.items.map(deviceView), next_cursor: page.next_cursor }
    })

    app.get('/api/devices/:serial', {
      schema: { summary: 'One device', tags, params: SerialParams, response: { 200: DeviceView, ...errors(401, 404) } }
    }, async (request) => {
      const view = deviceView(await existing(request.params.serial))
      if (latestMetrics === undefined) return view
      const latest = await latestMetrics(request.params.serial)
      return { ...view, latest_metrics: Object.fromEntries(Object.entries(latest).map(([name, metric]) => [name, { ...metric, recorded_at: metric.recorded_at.toISOString() }])) }
    })

    app.patch('/api/devices/:serial', {
      schema: { summary: 'Change nickname, group or metadata', tags, params: SerialParams, body: DevicePatch, response: { 200: DeviceView, ...errors(400, 401, 404) } }
    }, async (request) => {
      const result = await devices.update(request.params.serial, request.body)
      if (result.ok) return deviceView(result.device)
      if (result.reason === 'no_such_group') throw new ApiError('invalid_request', `no group with id ${request.body.group_id}`, 'group_id')
      throw notFound(`device ${request.params.serial}`)
    })

    app.delete('/api/devices/:serial', {
      schema: {
        summary: 'Remove a device from the registry (disconnects it; revoke it to keep it out)',
        tags, params: SerialParams, response: { 204: Type.Null(), ...errors(401, 404) }
      }
    }, async (request, reply) => {
      if (!await devices.remove(request.params.serial)) throw notFound(`device ${request.params.serial}`)
      return await reply.status(204).send(null)
    })

    for (const [action, revoked] of [['revoke', true], ['unrevoke', false]] as const) {
      app.post(`/api/devices/:serial/${action}`, {
        schema: {
          summary: revoked ? 'Revoke a device (disconnected at once, refused from then on)' : 'Restore a revoked device',
          tags, params: SerialParams, response: { 200: DeviceView, ...errors(401, 404) }
        }
      }, async (request) => {
        const device = await devices.setRevoked(request.params.serial, revoked)
        if (device === undefined) throw notFound(`device ${request.params.serial}`)
        return deviceView(device)
      })
    }
  }
}
