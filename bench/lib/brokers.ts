// The two brokers the benchmarks compare, each started on 127.0.0.1 on an ephemeral port:
// Shepherd in process (createServer, as in production, minus the port numbers) and a bare Aedes
// (stock in-memory persistence, no hooks) behind the same transport (WebSocket at /mqtt or TCP).
import { createServer as createHttpServer, Server as HttpServer } from 'node:http'
import net from 'node:net'
import { Aedes } from 'aedes'
import { WebSocketServer, createWebSocketStream } from 'ws'
import { loadConfig } from '../../src/config.js'
import { createLogger } from '../../src/logger.js'
import { createServer } from '../../src/server.js'

export type Transport = 'ws' | 'tcp'

export interface BenchBroker {
  /** Where devices connect: ws://127.0.0.1:<port>/mqtt or mqtt://127.0.0.1:<port>. */
  readonly url: string
  readonly aedes: Aedes
  /** Shepherd only: its REST API, http://127.0.0.1:<port> (the same server as ws://…/mqtt). */
  readonly httpUrl?: string
  /** Shepherd only: creates an operator API token (a bearer token for the REST API). */
  createApiToken? (name: string): Promise<string>
  close (): Promise<void>
}

export interface ShepherdSettings {
  transport: Transport
  dataDir: string
  fleetCaPath: string
  /** PostgreSQL; PGlite in memory when undefined. */
  databaseUrl: string | undefined
  /** More environment for loadConfig (METRICS_HANDLERS, for example); overrides the settings above. */
  env?: Record<string, string>
}

export async function startShepherd (settings: ShepherdSettings): Promise<BenchBroker> {
  const config = loadConfig({
    DATA_DIR: settings.dataDir,
    FLEET_CA_PATH: settings.fleetCaPath,
    HOST: '127.0.0.1',
    LOG_LEVEL: 'warn',
    ...(settings.databaseUrl === undefined ? {} : { DATABASE_URL: settings.databaseUrl }),
    ...settings.env
  })
  const server = await createServer(config, { logger: createLogger(config.logLevel), inMemoryDatabase: settings.databaseUrl === undefined })
  const { httpPort, mqttPort } = await server.listen({ http: 0, mqtt: 0 })
  return {
    url: settings.transport === 'ws' ? `ws://127.0.0.1:${httpPort}/mqtt` : `mqtt://127.0.0.1:${mqttPort}`,
    aedes: server.broker.aedes,
    httpUrl: `http://127.0.0.1:${httpPort}`,
    async createApiToken (name) {
      const created = await server.tokens.create(name)
      if (!created.ok) throw new Error(`could not create API token ${JSON.stringify(name)}: ${created.reason}`)
      return created.token
    },
    close: () => server.close()
  }
}

export async function startBaseline (transport: Transport): Promise<BenchBroker> {
  const aedes = await Aedes.createBroker()
  let server: net.Server
  if (transport === 'ws') {
    const http = createHttpServer()
    new WebSocketServer({ server: http, path: '/mqtt' }).on('connection', (socket, request) => {
      const stream = createWebSocketStream(socket)
      stream.on('error', () => { socket.terminate() })
      aedes.handle(stream, request)
    })
    server = http
  } else {
    server = net.createServer(socket => {
      socket.setNoDelay(true) // as Shepherd's TCP listener does (ws sets it on WebSocket sockets itself)
      aedes.handle(socket)
    })
  }
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject)
    server.listen(0, '127.0.0.1', resolve)
  })
  const { port } = server.address() as net.AddressInfo
  return {
    url: transport === 'ws' ? `ws://127.0.0.1:${port}/mqtt` : `mqtt://127.0.0.1:${port}`,
    aedes,
    async close () {
      await new Promise<void>(resolve => { aedes.close(() => resolve()) })
      const closed = new Promise<void>(resolve => server.close(() => resolve()))
      if (server instanceof HttpServer) server.closeAllConnections() // upgraded sockets are the ws clients'
      await closed
    }
  }
}
