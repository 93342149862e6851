// The Fastify application: REST routes and the MQTT-over-WebSocket endpoint on one port.
import fastify, { type FastifyInstance } from 'fastify'
import type { Logger } from '../logger.js'
import type { Broker } from '../mqtt/broker.js'
import { registerMqttOverWebSocket } from './websocket-mqtt.js'
import { healthRoutes, type HealthDeps } from './routes/health.js'

export interface HttpAppDeps extends HealthDeps {
  logger: Logger
  broker: Broker
  tls?: { cert: Buffer, key: Buffer }
  maxWebSocketPayloadBytes: number
}

export async function buildHttpApp (deps: HttpAppDeps): Promise<FastifyInstance> {
  const app = fastify({
    loggerInstance: deps.logger,
    ...(deps.tls === undefined ? {} : { https: { cert: deps.tls.cert, key: deps.tls.key, minVersion: 'TLSv1.2' as const } })
  }) as unknown as FastifyInstance
  await registerMqttOverWebSocket(app, deps.broker, deps.maxWebSocketPayloadBytes)
  await app.register(healthRoutes(deps))
  return app
}
