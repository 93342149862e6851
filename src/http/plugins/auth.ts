// Bearer-token authentication for every route unless it is declared public
// (`config: { public: true }`, e.g. health and signed firmware downloads).
import type { FastifyInstance, FastifyRequest } from 'fastify'
import { ApiError } from '../api-errors.js'

declare module 'fastify' {
  interface FastifyContextConfig { public?: boolean }
  interface FastifyRequest { operator?: string }
}

export interface TokenVerifier {
  /** The token's name, or undefined when it is not a valid token. */
  verify (token: string): Promise<{ name: string } | undefined>
}

export function bearerTokenOf (request: FastifyRequest): string | undefined {
  const header = request.headers.authorization
  const match = header === undefined ? null : /^Bearer\s+(\S+)\s*$/i.exec(header)
  return match?.[1]
}

export function registerBearerAuth (app: FastifyInstance, tokens: TokenVerifier): void {
  app.addHook('onRequest', async (request) => {
    if (request.routeOptions.config.public === true) return
    const token = bearerTokenOf(request)
    if (token === undefined) throw new ApiError('unauthorized', 'missing "Authorization: Bearer <token>" header; create a token with `shepherd token create --name NAME`')
    const found = await tokens.verify(token)
    if (found === undefined) {
      request.log.warn({ reason: 'unknown_token' }, 'API request refused')
      throw new ApiError('unauthorized', 'the API token is not valid (unknown or revoked)')
    }
    request.operator = found.name
  })
}
