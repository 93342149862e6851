// The Fastify application: the MQTT-over-WebSocket endpoint, the OpenAPI document and docs, and
// the REST routes behind bearer-token authentication, on one port.
import type { Duplex } from 'node:stream'
import fastify, { type FastifyInstance, type FastifyPluginAsync } from 'fastify'
import type { Logger } from '../logger.js'
import type { Broker } from '../mqtt/broker.js'
import { registerMqttOverWebSocket, type WebSocketLimits } from './websocket-mqtt.js'
import { registerErrorHandling } from './api-errors.js'
import { registerValidation } from './validation.js'
import { registerBearerAuth, type TokenVerifier } from './plugins/auth.js'
import { registerOpenApi } from './plugins/openapi.js'
import { VERSION } from '../version.js'

export interface HttpAppDeps {
  logger: Logger
  broker: Broker
  tls?: { cert: Buffer, key: Buffer }
  webSocketLimits: WebSocketLimits
  tokens: TokenVerifier
  /** Route plugins; each route needs a token unless its config says `public: true`. */
  routes: readonly FastifyPluginAsync[]
  /** Called when a response is sent (request duration telemetry). */
  onResponse?: (route: string, method: string, statusCode: number, seconds: number) => void
}

/** A request Node's HTTP parser refused (an unknown method, a body longer than its Content-Length): the error shape of contract §4 too. */
function answerUnparsableRequest (error: Error & { code?: string }, socket: Duplex): void {
  if (!socket.writable) { socket.destroy(); return }
  const body = JSON.stringify({ error: 'invalid_request', message: `the request is not valid HTTP (${error.code ?? error.message})` })
  socket.end(`HTTP/1.1 400 Bad Request\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`)
}

export async function buildHttpApp (deps: HttpAppDeps): Promise<FastifyInstance> {
  const app = fastify({
    loggerInstance: deps.logger,
    clientErrorHandler: answerUnparsableRequest,
    ...(deps.tls === undefined ? {} : { https: { cert: deps.tls.cert, key: deps.tls.key, minVersion: 'TLSv1.2' as const } })
  }) as unknown as FastifyInstance
  registerErrorHandling(app)
  registerValidation(app)
  if (deps.onResponse !== undefined) {
    const onResponse = deps.onResponse
    app.addHook('onResponse', async (request, reply) => {
      onResponse(request.routeOptions.url ?? 'unmatched', request.method, reply.statusCode, reply.elapsedTime / 1000)
    })
  }
  await registerMqttOverWebSocket(app, deps.broker, deps.webSocketLimits)
  await registerOpenApi(app, VERSION, deps.tokens)
  await app.register(async (api) => {
    registerBearerAuth(api, deps.tokens)
    for (const routes of deps.routes) await api.register(routes)
  })
  return app
}
