// The REST API's one error catalogue and the handler that turns every failure into
// `{"error", "message", "field"?}` (contract §4). Internals of 5xx failures go to the log only.
import type { FastifyError, FastifyInstance } from 'fastify'
import { InvalidCursor } from '../paging.js'

export const API_ERRORS = {
  invalid_request: 400,
  malformed_json: 400,
  unauthorized: 401,
  forbidden: 403,
  not_found: 404,
  conflict: 409,
  payload_too_large: 413,
  unsupported_media_type: 415,
  range_not_satisfiable: 416,
  internal_error: 500,
  service_unavailable: 503
} as const

export type ApiErrorCode = keyof typeof API_ERRORS

export class ApiError extends Error {
  readonly status: number
  constructor (readonly code: ApiErrorCode, message: string, readonly field?: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause })
    this.name = 'ApiError'
    this.status = API_ERRORS[code]
  }
}

export const notFound = (what: string): ApiError => new ApiError('not_found', `${what} not found`)

/** `/metadata/key` → `metadata.key`; the name a client recognises from its request. */
function fieldOf (error: NonNullable<FastifyError['validation']>[number]): string | undefined {
  const params = error.params as Record<string, unknown>
  const path = error.instancePath.split('/').filter(part => part !== '')
  const child = params.missingProperty ?? params.additionalProperty
  if (typeof child === 'string') path.push(child)
  return path.length > 0 ? path.join('.') : undefined
}

const BODY_ERRORS: Record<string, ApiErrorCode> = {
  FST_ERR_CTP_INVALID_JSON_BODY: 'malformed_json',
  FST_ERR_CTP_EMPTY_JSON_BODY: 'malformed_json',
  FST_ERR_CTP_BODY_TOO_LARGE: 'payload_too_large',
  FST_ERR_CTP_INVALID_MEDIA_TYPE: 'unsupported_media_type'
}

export function toApiError (error: FastifyError | ApiError | InvalidCursor): ApiError {
  if (error instanceof ApiError) return error
  if (error instanceof InvalidCursor) return new ApiError('invalid_request', error.message, 'cursor')
  const first = error.validation?.[0]
  if (first !== undefined) {
    const field = fieldOf(first)
    const where = error.validationContext === 'body' ? '' : ` (${error.validationContext ?? 'request'})`
    const subject = field ?? (error.validationContext === 'body' ? 'the request body' : 'request')
    // a union of literals fails once per literal, each error naming its one allowed value
    const allowed = error.validation!.filter(e => e.keyword === 'const' && e.instancePath === first.instancePath).map(e => String((e.params as { allowedValue?: unknown }).allowedValue))
    const message = first.keyword === 'additionalProperties'
      ? `${subject} is not a known field${where}`
      : first.keyword === 'const' ? `${subject} must be one of ${allowed.join(', ')}${where}` : `${subject} ${first.message ?? 'is invalid'}${where}`
    return new ApiError('invalid_request', message, field)
  }
  const code = error.code === undefined ? undefined : BODY_ERRORS[error.code]
  if (code !== undefined) return new ApiError(code, code === 'malformed_json' ? `the request body is not valid JSON: ${error.message}` : error.message)
  if (error.statusCode !== undefined && error.statusCode >= 400 && error.statusCode < 500) {
    return new ApiError(error.statusCode === 404 ? 'not_found' : 'invalid_request', error.message)
  }
  return new ApiError('internal_error', 'the server failed to handle the request; the log has the details')
}

export function registerErrorHandling (app: FastifyInstance): void {
  app.setErrorHandler((error: FastifyError | ApiError | InvalidCursor, request, reply) => {
    const apiError = toApiError(error)
    if (apiError.status >= 500) request.log.error({ err: error }, 'request failed')
    const body = { error: apiError.code, message: apiError.message, ...(apiError.field === undefined ? {} : { field: apiError.field }) }
    void reply.status(apiError.status).send(body)
  })
  app.setNotFoundHandler((request, reply) => {
    void reply.status(404).send({ error: 'not_found', message: `no route ${request.method} ${request.url.split('?')[0]}` })
  })
}
