// MQTT over WebSocket at /mqtt on the HTTP port: ws (through @fastify/websocket) carries the
// bytes, ws's createWebSocketStream turns the socket into the duplex stream Aedes reads.
import type { FastifyInstance } from 'fastify'
import fastifyWebsocket from '@fastify/websocket'
import { createWebSocketStream } from 'ws'
import type { Broker } from '../mqtt/broker.js'

export async function registerMqttOverWebSocket (app: FastifyInstance, broker: Broker, maxPayloadBytes: number): Promise<void> {
  await app.register(fastifyWebsocket, {
    options: {
      maxPayload: maxPayloadBytes,
      // MQTT clients ask for the "mqtt" subprotocol (older ones "mqttv3.1"); answer with it
      handleProtocols: (protocols) => protocols.has('mqtt') ? 'mqtt' : (protocols.values().next().value ?? false)
    }
  })
  // one connection per device: an info line per upgrade would flood the log at fleet scale
  app.get('/mqtt', { websocket: true, logLevel: 'warn' }, (socket, request) => {
    const stream = createWebSocketStream(socket)
    stream.on('error', () => { socket.terminate() })
    broker.handleConnection(stream, request.raw)
  })
}
