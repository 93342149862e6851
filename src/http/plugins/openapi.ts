// The OpenAPI document, generated from the routes' TypeBox schemas, at /api/openapi.json, and
// browsable docs at /docs; both need an API token like every other route (contract §4): the docs
// pages, opened in a browser, also take it as the password of HTTP Basic. Must be registered
// before the routes it documents.
import type { FastifyInstance } from 'fastify'
import swagger from '@fastify/swagger'
import swaggerUi from '@fastify/swagger-ui'
import { requireToken, type TokenVerifier } from './auth.js'

export async function registerOpenApi (app: FastifyInstance, version: string, tokens: TokenVerifier): Promise<void> {
  await app.register(swagger, {
    openapi: {
      info: { title: 'Shepherd REST API', version, description: 'Fleet management for embedded Linux devices. Every route except /api/health and signed firmware downloads needs `Authorization: Bearer <token>`.' },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }]
    },
    // shared schemas appear under their $id (Device, Error, ...) instead of def-0, def-1
    refResolver: { buildLocalReference: (json, _baseUri, _fragment, i) => typeof json.$id === 'string' ? json.$id : `def-${i}` }
  })
  await app.register(swaggerUi, {
    routePrefix: '/docs',
    uiConfig: { persistAuthorization: true },
    uiHooks: { onRequest: requireToken(tokens, { browser: true }) }
  })
  app.get('/api/openapi.json', { schema: { hide: true }, onRequest: requireToken(tokens) }, async () => app.swagger())
}
