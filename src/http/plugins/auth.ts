// Bearer-token authentication for every route unless it is declared public
// (`config: { public: true }`, e.g. health and signed firmware downloads), and for the docs pages,
// which a browser opens: there the token is also taken as the password of HTTP Basic.
import type { FastifyInstance, FastifyReply, FastifyRequest, onRequestAsyncHookHandler } from 'fastify'
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

/** The password of `Authorization: Basic …` (any user name). */
function basicPasswordOf (request: FastifyRequest): string | undefined {
  const header = request.headers.authorization
  const match = header === undefined ? null : /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(header)
  if (match === null) return undefined
  const decoded = Buffer.from(match[1]!, 'base64').toString('utf8')
  const colon = decoded.indexOf(':')
  return colon < 0 || colon === decoded.length - 1 ? undefined : decoded.slice(colon + 1)
}

const DOCS_REALM = 'Basic realm="Shepherd API docs: user name anything, password an API token", charset="UTF-8"'

/**
 * An onRequest hook that admits requests carrying a valid API token. With `browser`, the token
 * may also come as the Basic password, and a refusal asks the browser for it.
 */
export function requireToken (tokens: TokenVerifier, options: { browser?: boolean } = {}): onRequestAsyncHookHandler {
  const browser = options.browser === true
  const refuse = (reply: FastifyReply, error: ApiError): never => {
    if (browser) void reply.header('www-authenticate', DOCS_REALM)
    throw error
  }
  return async function (request, reply) {
    const token = bearerTokenOf(request) ?? (browser ? basicPasswordOf(request) : undefined)
    if (token === undefined) {
      return refuse(reply, new ApiError('unauthorized', browser
        ? 'an API token is needed: log in with any user name and the token as password, or send "Authorization: Bearer <token>"; create one with `shepherd token create --name NAME`'
        : 'missing "Authorization: Bearer <token>" header; create a token with `shepherd token create --name NAME`'))
    }
    const found = await tokens.verify(token)
    if (found === undefined) {
      request.log.warn({ reason: 'unknown_token' }, 'API request refused')
      return refuse(reply, new ApiError('unauthorized', 'the API token is not valid (unknown or revoked)'))
    }
    request.operator = found.name
  }
}

export function registerBearerAuth (app: FastifyInstance, tokens: TokenVerifier): void {
  const check = requireToken(tokens)
  app.addHook('onRequest', async function (request, reply) {
    if (request.routeOptions.config.public === true) return
    await check.call(this, request, reply)
  })
}
