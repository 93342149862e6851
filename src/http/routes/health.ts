// GET /api/health: liveness plus the number of devices connected (fleet-wide, from the registry).
import type { FastifyPluginAsync } from 'fastify'

export interface HealthDeps {
  countOnlineDevices (): Promise<number>
}

export function healthRoutes (deps: HealthDeps): FastifyPluginAsync {
  return async (app) => {
    // polled by load balancers: no request log lines
    app.get('/api/health', { logLevel: 'warn' }, async () => ({ status: 'ok', online_devices: await deps.countOnlineDevices() }))
  }
}
