// Plain MQTT over TCP (or MQTTS when TLS is configured) on MQTT_PORT.
import net from 'node:net'
import tls from 'node:tls'
import type { Broker } from './broker.js'
import { listenOn } from '../listen.js'

export interface TcpListener { port: number, close (): Promise<void> }

export async function startTcpListener (broker: Broker, options: { host: string, port: number, tls?: { cert: Buffer, key: Buffer } }): Promise<TcpListener> {
  const onSocket = (socket: net.Socket): void => {
    // Nagle's algorithm adds 20-40 ms to small MQTT packets (acks, commands).
    socket.setNoDelay(true)
    broker.handleConnection(socket)
  }
  const server = options.tls === undefined
    ? net.createServer(onSocket)
    : tls.createServer({ cert: options.tls.cert, key: options.tls.key, minVersion: 'TLSv1.2' }, onSocket)
  const port = await listenOn(server, options.port, options.host, 'MQTT_PORT')
  return {
    port,
    close: async () => { await new Promise<void>(resolve => server.close(() => resolve())) }
  }
}
