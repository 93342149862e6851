// MQTT over WebSocket at /mqtt on the HTTP port: ws carries the bytes, ws's createWebSocketStream
// turns the socket into the duplex stream Aedes reads.
//
// The upgrade is taken off the HTTP server before Fastify sees it. Routed through Fastify (as
// @fastify/websocket does), every connection kept its Fastify request, reply, ServerResponse and
// child logger alive for as long as the device stayed connected: about 2 KiB of heap per device,
// for nothing a device connection uses. Upgrades to any other path are answered 404.
//
// ws assembles a whole message (up to maxPayload, the MQTT packet limit after authentication)
// before the MQTT parser sees a byte of it, so until the connection has authenticated, the bytes
// read from its socket are counted and it is closed past the limit of a CONNECT.
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { Client } from 'aedes'
import type { FastifyInstance } from 'fastify'
import { WebSocketServer, createWebSocketStream } from 'ws'
import type { Broker } from '../mqtt/broker.js'
import type { GatewayStats } from '../mqtt/device-gateway.js'

const MQTT_WEBSOCKET_PATH = '/mqtt'

export interface WebSocketLimits {
  /** Largest WebSocket message: MQTT_MAX_PACKET_SIZE. */
  maxPayloadBytes: number
  /** Bytes a connection may send before it has authenticated (a CONNECT and its framing). */
  preAuthenticationBytes: number
  isAuthenticated (client: Client): boolean
  /** Counts a connection closed over preAuthenticationBytes among the refused ones. */
  stats: Pick<GatewayStats, 'connectRefused'>
}

export async function registerMqttOverWebSocket (app: FastifyInstance, broker: Broker, limits: WebSocketLimits): Promise<void> {
  const { maxPayloadBytes } = limits
  const wss = new WebSocketServer({
    noServer: true,
    maxPayload: maxPayloadBytes,
    // MQTT clients ask for the "mqtt" subprotocol (older ones "mqttv3.1"); answer with it
    handleProtocols: (protocols) => protocols.has('mqtt') ? 'mqtt' : (protocols.values().next().value ?? false)
  })

  function onUpgrade (request: IncomingMessage, socket: Duplex, head: Buffer): void {
    if (request.url?.split('?', 1)[0] !== MQTT_WEBSOCKET_PATH) {
      socket.on('error', () => { socket.destroy() })
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n')
      return
    }
    const remote = request.socket.remoteAddress
    let received = head.length
    let client: Client | undefined
    let stream: Duplex | undefined
    const countUntilAuthenticated = (chunk: Buffer): void => {
      if (client !== undefined && limits.isAuthenticated(client)) {
        socket.off('data', countUntilAuthenticated)
        return
      }
      received += chunk.length
      if (received > limits.preAuthenticationBytes) {
        limits.stats.connectRefused('too_much_before_connect')
        app.log.warn({ remote, bytes: received, reason: 'too_much_before_connect' }, `MQTT over WebSocket connection closed: over ${limits.preAuthenticationBytes} bytes before it authenticated`)
        socket.off('data', countUntilAuthenticated)
        // the stream too: what ws already passed on would otherwise still reach the MQTT parser
        // (and be refused, and counted, a second time as packet_too_large)
        stream?.destroy()
        socket.destroy()
      }
    }
    wss.handleUpgrade(request, socket, head, (websocket) => {
      socket.on('data', countUntilAuthenticated) // beside ws's own reader, attached by now
      stream = createWebSocketStream(websocket)
      stream.on('error', (error) => {
        app.log.error({ err: error, remote }, 'MQTT over WebSocket connection error')
        websocket.terminate()
      })
      client = broker.handleConnection(stream, remote)
    })
  }

  app.server.on('upgrade', onUpgrade)
  app.addHook('preClose', (done) => {
    app.server.off('upgrade', onUpgrade)
    for (const websocket of wss.clients) websocket.close()
    wss.close()
    done()
  })
}
