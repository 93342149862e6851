// Request validation with two Ajv instances: query strings and path parameters arrive as text and
// are coerced to their schema's types ("?limit=5"), but a JSON body is taken as sent — with
// Fastify's single default instance `{"nickname": ""}` would be coerced to null and `"7"` to 7.
import type { FastifyInstance } from 'fastify'
import { Ajv, type Options } from 'ajv'
import addFormatsModule from 'ajv-formats'

const addFormats = addFormatsModule as unknown as (ajv: Ajv) => Ajv

function ajvWith (options: Options): Ajv {
  // allErrors stays false: with it, one request can make Ajv do unbounded work
  return addFormats(new Ajv({ useDefaults: true, removeAdditional: false, allErrors: false, ...options }))
}

export function registerValidation (app: FastifyInstance): void {
  const forBodies = ajvWith({ coerceTypes: false })
  const forText = ajvWith({ coerceTypes: 'array' })
  app.setValidatorCompiler(({ schema, httpPart }) => (httpPart === 'body' ? forBodies : forText).compile(schema))
}
