// Schemas shared by several routes (TypeBox: they validate requests, shape responses and feed
// the OpenAPI document).
import { Type, type TSchema } from 'typebox'

export const ErrorBody = Type.Object({
  error: Type.String({ description: 'machine-readable code' }),
  message: Type.String({ description: 'what went wrong and what to do' }),
  field: Type.Optional(Type.String({ description: 'the request field at fault' }))
}, { $id: 'Error', description: 'every error answer' })

export const Serial = Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$', description: 'device serial (the CN of its certificate)' })
export const SerialParams = Type.Object({ serial: Serial })
export const IdParams = Type.Object({ id: Type.Integer({ minimum: 1, maximum: Number.MAX_SAFE_INTEGER }) })

export const Timestamp = Type.Union([Type.String({ format: 'date-time' }), Type.Null()])

export const Metadata = Type.Record(Type.String(), Type.Unknown(), { description: 'free-form keys reported by the device (info topic) or set by operators' })

export const PageQuery = {
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 500, default: 100 })),
  cursor: Type.Optional(Type.String({ maxLength: 200, description: 'next_cursor of the previous page' }))
}

export function pageSchema<T extends TSchema> (item: T) {
  return Type.Object({
    items: Type.Array(item),
    next_cursor: Type.Union([Type.String(), Type.Null()], { description: 'pass as cursor for the next page; null on the last page' })
  })
}

/** The error answers a route can give, for the OpenAPI document. */
export function errors (...statuses: number[]): Record<number, typeof ErrorBody> {
  return Object.fromEntries(statuses.map(status => [status, ErrorBody]))
}
