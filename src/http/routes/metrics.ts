// GET /metrics: the server's figures in the Prometheus text format. Accepts an API token, or the
// METRICS_TOKEN when one is set, so that a scraper needs no operator token.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyPluginAsync } from 'fastify'
import { Type } from 'typebox'
import { ApiError } from '../api-errors.js'
import { bearerTokenOf, type TokenVerifier } from '../plugins/auth.js'
import { errors } from '../schemas.js'

export interface MetricsRouteDeps {
  metrics (): Promise<string>
  tokens: TokenVerifier
  metricsToken: string | undefined
}

const PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'

const digest = (value: string): Buffer => createHash('sha256').update(value).digest()

export function metricsRoutes (deps: MetricsRouteDeps): FastifyPluginAsync {
  const metricsToken = deps.metricsToken === undefined ? undefined : digest(deps.metricsToken)
  const isMetricsToken = (token: string): boolean => metricsToken !== undefined && timingSafeEqual(digest(token), metricsToken)

  return async (app) => {
    app.get('/metrics', {
      logLevel: 'warn', // scraped every few seconds: no request log lines
      config: { public: true }, // checked here: the API token hook does not know METRICS_TOKEN
      schema: {
        summary: 'Prometheus figures of this node (API token or METRICS_TOKEN)',
        tags: ['metrics'],
        response: {
          200: { description: 'Prometheus text exposition format 0.0.4', content: { 'text/plain': { schema: Type.String() } } },
          ...errors(401)
        }
      }
    }, async (request, reply) => {
      const token = bearerTokenOf(request)
      if (token === undefined) throw new ApiError('unauthorized', 'missing "Authorization: Bearer <token>" header: an API token, or METRICS_TOKEN when the server has one')
      if (!isMetricsToken(token) && await deps.tokens.verify(token) === undefined) {
        request.log.warn({ reason: 'unknown_token' }, 'metrics request refused')
        throw new ApiError('unauthorized', 'the token is neither a valid API token nor the METRICS_TOKEN')
      }
      return await reply.header('content-type', PROMETHEUS_CONTENT_TYPE).send(await deps.metrics())
    })
  }
}
