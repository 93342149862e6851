// GET /api/health: liveness plus the number of devices connected (fleet-wide, from the registry).
import type { FastifyPluginAsync } from 'fastify'
import { Type } from 'typebox'
import { ApiError } from '../api-errors.js'

export interface HealthDeps {
  countOnlineDevices (): Promise<number>
}

export function healthRoutes (deps: HealthDeps): FastifyPluginAsync {
  return async (app) => {
    app.get('/api/health', {
      logLevel: 'warn', // polled by load balancers: no request log lines
      config: { public: true },
      schema: {
        summary: 'Liveness and the number of devices connected',
        tags: ['health'],
        security: [],
        response: { 200: Type.Object({ status: Type.Literal('ok'), online_devices: Type.Integer() }) }
      }
    }, async () => {
      // a node without its database cannot admit devices or serve the API: a load balancer should route around it
      const online = await deps.countOnlineDevices().catch((error: unknown) => {
        throw new ApiError('service_unavailable', 'the database does not answer; this node cannot serve the fleet until it does', undefined, error)
      })
      return { status: 'ok' as const, online_devices: online }
    })
  }
}
