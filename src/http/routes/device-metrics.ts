// GET /api/devices/:serial/metrics: the points the postgres handler stored, newest first, with
// filters (name, since, until) and keyset paging on (recorded_at, id).
import type { FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { MAX_NAME_LENGTH } from '../../metrics/points.js'
import { InvalidCursor, afterCursor, pageOf } from '../../paging.js'
import type { MetricsRepository } from '../../storage/repos/metrics-repo.js'
import { ApiError, notFound } from '../api-errors.js'
import { SerialParams, errors, pageSchema } from '../schemas.js'

const MetricPointView = Type.Object({
  name: Type.String(),
  value: Type.Number(),
  unit: Type.Union([Type.String(), Type.Null()]),
  recorded_at: Type.String({ format: 'date-time' }),
  received_at: Type.String({ format: 'date-time' })
}, { $id: 'MetricPoint' })

const MetricsQuery = Type.Object({
  name: Type.Optional(Type.String({ minLength: 1, maxLength: MAX_NAME_LENGTH, description: 'only points of this metric' })),
  since: Type.Optional(Type.String({ format: 'date-time', description: 'only points recorded at or after this time (ISO-8601)' })),
  until: Type.Optional(Type.String({ format: 'date-time', description: 'only points recorded at or before this time (ISO-8601)' })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000, default: 100 })),
  cursor: Type.Optional(Type.String({ maxLength: 200, description: 'next_cursor of the previous page' }))
}, { additionalProperties: false })

const MAX_BIGINT = 2n ** 63n - 1n
const MAX_CURSOR_US = 10n ** 17n

/** The cursor key: recorded_at in microseconds and the row id. */
function positionOf (cursor: string | undefined): { recordedUs: string, id: string } | undefined {
  const key = afterCursor(cursor)
  if (key === undefined) return undefined
  const match = /^(-?\d{1,18}):(\d{1,19})$/.exec(key)
  // within bigint, and within the years PostgreSQL's timestamps hold (±1e17 µs: years 1 to 5138 are enough)
  if (match === null || BigInt(match[2]!) > MAX_BIGINT || BigInt(match[1]!) > MAX_CURSOR_US || BigInt(match[1]!) < -MAX_CURSOR_US) throw new InvalidCursor()
  return { recordedUs: match[1]!, id: match[2]! }
}

export function deviceMetricsRoutes (deps: { metrics: MetricsRepository, deviceExists: (serial: string) => Promise<boolean> }): FastifyPluginAsync {
  return async (plain) => {
    const app = plain.withTypeProvider<TypeBoxTypeProvider>()
    app.get('/api/devices/:serial/metrics', {
      schema: {
        summary: 'Stored metric points of a device, newest first',
        tags: ['devices'],
        params: SerialParams,
        querystring: MetricsQuery,
        response: { 200: pageSchema(MetricPointView), ...errors(400, 401, 404) }
      }
    }, async (request) => {
      const { serial } = request.params
      const { name, limit = 100, cursor } = request.query
      const since = request.query.since === undefined ? undefined : new Date(request.query.since)
      const until = request.query.until === undefined ? undefined : new Date(request.query.until)
      if (since !== undefined && until !== undefined && since > until) throw new ApiError('invalid_request', 'since is later than until', 'since')
      const before = positionOf(cursor)
      if (!await deps.deviceExists(serial)) throw notFound(`device ${serial}`)
      const rows = await deps.metrics.listPoints({ serial, name, since, until, before, limit: limit + 1 })
      const page = pageOf(rows, limit, row => `${row.recorded_us}:${row.id}`)
      return {
        items: page.items.map(row => ({
          name: row.name, value: row.value, unit: row.unit, recorded_at: row.recorded_at.toISOString(), received_at: row.received_at.toISOString()
        })),
        next_cursor: page.next_cursor
      }
    })
  }
}
