// Request validation with two Ajv instances: query strings and path parameters arrive as text and
// are coerced to their schema's types ("?limit=5"), but a JSON body is taken as sent — with
// Fastify's single default instance `{"nickname": ""}` would be coerced to null and `"7"` to 7.
import type { FastifyInstance } from 'fastify'
import { Ajv, type Options } from 'ajv'
import addFormatsModule from 'ajv-formats'
import { hasNul, unstorableJson } from '../json-safety.js'
import { ApiError } from './api-errors.js'

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv

function ajvWith (options: Options): Ajv {
  // allErrors stays false: with it, one request can make Ajv do unbounded work
  return addFormats(new Ajv({ useDefaults: true, removeAdditional: false, allErrors: false, ...options }))
}

export function registerValidation (app: FastifyInstance): void {
  const forBodies = ajvWith({ coerceTypes: false })
  const forText = ajvWith({ coerceTypes: 'array' })
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? forBodies : forText).compile(schema))

  // JSON bodies: an empty one is no body (clients send the header on a bodiless POST or DELETE;
  // a route that needs a body says so in its schema), and what cannot be stored is refused here
  const parseJson = app.getDefaultJsonParser('error', 'error')
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '') { done(null, undefined); return }
    parseJson(request, body as string, (error: Error | null, parsed?: unknown) => {
      if (error !== null) { done(error, undefined); return }
      const unstorable = unstorableJson(parsed)
      if (unstorable === undefined) done(null, parsed)
      else done(new ApiError('invalid_request', `${unstorable.path === '' ? 'the body' : unstorable.path} ${unstorable.reason}`, unstorable.path === '' ? undefined : unstorable.path), undefined)
    })
  })
  // a body is JSON (or, for firmware uploads, raw bytes: that route has its own parser)
  app.removeContentTypeParser('text/plain')

  app.addHook('preValidation', async (request) => {
    for (const [part, values] of [['query', request.query], ['params', request.params]] as const) {
      for (const [name, value] of Object.entries((values ?? {}) as Record<string, unknown>)) {
        if ([value].flat().some(item => typeof item === 'string' && hasNul(item))) {
          throw new ApiError('invalid_request', `${name} contains a NUL character (\\u0000) (${part === 'query' ? 'querystring' : 'path'})`, name)
        }
      }
    }
  })
}
