// MQTT over WebSocket at /mqtt on the HTTP port: ws carries the bytes, ws's createWebSocketStream
// turns the socket into the duplex stream Aedes reads.
//
// The upgrade is taken off the HTTP server before Fastify sees it. Routed through Fastify (as
// @fastify/websocket does), every connection kept its Fastify request, reply, ServerResponse and
// child logger alive for as long as the device stayed connected: about 2 KiB of heap per device,
// for nothing a device connection uses. Upgrades to any other path are answered 404.
import type { IncomingMessage } from 'node:http'
import type { Duplex } from 'node:stream'
import type { FastifyInstance } from 'fastify'
import { WebSocketServer, createWebSocketStream } from 'ws'
import type { Broker } from '../mqtt/broker.js'

const MQTT_WEBSOCKET_PATH = '/mqtt'

export async function registerMqttOverWebSocket (app: FastifyInstance, broker: Broker, maxPayloadBytes: number): Promise<void> {
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
    wss.handleUpgrade(request, socket, head, (websocket) => {
      const stream = createWebSocketStream(websocket)
      stream.on('error', (error) => {
        app.log.error({ err: error, remote }, 'MQTT over WebSocket connection error')
        websocket.terminate()
      })
      broker.handleConnection(stream, remote)
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
