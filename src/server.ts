// Composition root: config → storage → domain → edges. `createServer` wires everything from one
// typed Config; `listen` opens the ports, `close` shuts down in order (stop accepting, mark
// devices offline with reason server_shutdown, close the broker, flush the metrics pipeline and
// close its handlers, close the database).
import { randomUUID } from 'node:crypto'
import { readFile, mkdir } from 'node:fs/promises'
import { createSecureContext } from 'node:tls'
import { StartupError } from './errors.js'
import type { FastifyInstance } from 'fastify'
import { Redis } from 'ioredis'
import type { Config } from './config.js'
import { createLogger, type Logger } from './logger.js'
import { loadFleetCaPem } from './certs/fleet-ca.js'
import { createFleetTrust } from './certs/trust.js'
import { createDeviceAuthenticator, MAX_PASSWORD_BYTES } from './auth/device-authenticator.js'
import { createMemoryReplayGuard, createRedisReplayGuard, type ReplayGuard } from './auth/replay-guard.js'
import { createDeviceRegistry } from './devices/device-registry.js'
import { createPresence } from './presence/presence.js'
import { openDatabase, type Database } from './storage/db.js'
import { migrateLatest } from './storage/migrate.js'
import { createDeviceRepository } from './storage/repos/devices-repo.js'
import { openNodeChannel } from './storage/node-channel.js'
import { createBroker, type Broker } from './mqtt/broker.js'
import { createDeviceGateway } from './mqtt/device-gateway.js'
import { startTcpListener, type TcpListener } from './mqtt/tcp-listener.js'
import { buildHttpApp } from './http/app.js'
import { healthRoutes } from './http/routes/health.js'
import { deviceRoutes } from './http/routes/devices.js'
import { deviceMetricsRoutes } from './http/routes/device-metrics.js'
import { createMetricsRepository } from './storage/repos/metrics-repo.js'
import { eventRoutes } from './http/routes/events.js'
import { metricsRoutes } from './http/routes/metrics.js'
import { createEventBus, type EventBus, type MessageEmitter } from './events/event-bus.js'
import type { EventSink } from './events/events.js'
import { groupRoutes } from './http/routes/groups.js'
import { createGroups } from './groups/groups.js'
import { createGroupRepository } from './storage/repos/groups-repo.js'
import { createApiTokens, type ApiTokens } from './operators/api-tokens.js'
import { createApiTokenRepository } from './storage/repos/api-tokens-repo.js'
import { createDeviceAdmin } from './devices/device-admin.js'
import { listenOn } from './listen.js'
import { startControlSocket } from './control/control-socket.js'
import { createTelemetry } from './telemetry.js'
import type { Publish } from './ports.js'
import { createMetricsHandlers } from './metrics/handlers/index.js'
import { createMetricsPipeline, type MetricsPipeline } from './metrics/pipeline.js'
import { createCommands, type Commands } from './commands/commands.js'
import type { CommandRequest } from './commands/command-request.js'
import { createCommandRepository } from './storage/repos/commands-repo.js'
import { commandRoutes } from './http/routes/commands.js'
import { createFirmwareStore, type MetaInput } from './firmware/firmware-store.js'
import { createDownloadUrls } from './firmware/download-urls.js'
import { createUpdates, type Updates } from './firmware/updates.js'
import { createFirmwareFiles } from './storage/firmware-files.js'
import { createFirmwareRepository, createUpdateRepository } from './storage/repos/firmware-repo.js'
import { loadSecretKeyBase } from './storage/secret-key.js'
import { firmwareRoutes } from './http/routes/firmware.js'
import { updateRoutes } from './http/routes/updates.js'
import type { FirmwareMeta, StagedFile } from './firmware/types.js'
import { createObservers, type Observers } from './observers/observers.js'
import type { LoginLimitOptions } from './observers/login-limit.js'
import { createObserverRepository } from './storage/repos/observers-repo.js'
import { openPasswordFile } from './storage/password-file.js'
import { startSysTopics } from './mqtt/sys-topics.js'
import { VERSION } from './version.js'

export interface ServerOptions {
  logger?: Logger
  /** Embedded database in memory instead of $DATA_DIR/db (tests). */
  inMemoryDatabase?: boolean
  heartbeatIntervalMs?: number
  /** Interval of the heartbeat comment on open /api/events streams (default 15 s). */
  sseHeartbeatMs?: number
  /** How often commands past their expiry, and updates past their timeouts, are swept (default 1 s). */
  expiryIntervalMs?: number
  /** How often the $SYS topics are refreshed (default 10 s). */
  sysIntervalMs?: number
  /** Bytes waiting to be sent to an MQTT connection before it is closed as not reading (default 8 MiB). */
  mqttMaxBufferedBytes?: number
  /** How often live observer sessions are checked against their accounts (default 10 s). */
  observerRecheckMs?: number
  /** Observer password checks running and waiting at once (default 2 and 100). */
  observerLoginLimit?: LoginLimitOptions
}

export interface ShepherdServer {
  readonly config: Config
  readonly logger: Logger
  readonly db: Database
  readonly broker: Broker
  readonly http: FastifyInstance
  readonly nodeId: string
  readonly tokens: ApiTokens
  /** Live events of every node (what GET /api/events streams). */
  readonly events: EventBus
  readonly commands: Commands
  readonly updates: Updates
  readonly observers: Observers
  /**
   * Opens the HTTP and MQTT ports (from config, or `ports` — 0 there means an ephemeral port, as
   * tests use; MQTT_PORT=0 in config turns MQTT/TCP off). Answers the ports actually bound.
   */
  listen (ports?: { http: number, mqtt: number }): Promise<{ httpPort: number, mqttPort: number | undefined }>
  close (): Promise<void>
  /** Resolves when pending presence updates are written (tests). */
  settled (): Promise<void>
  revokeDevice (serial: string): Promise<{ found: boolean }>
  /** Reads MQTT_PASSWORD_FILE again (SIGHUP); nothing without one. */
  reloadPasswordFile (): Promise<void>
  /** The server's figures in Prometheus text format (served on /metrics by the REST API). */
  metrics (): Promise<string>
}

const PRE_AUTH_PACKET_BYTES = MAX_PASSWORD_BYTES + 4096 // the CONNECT: password plus ids, will, header
const OBSERVER_RECHECK_MS = 10_000
/** Aedes's messages for packets it refuses and closes the connection over (lib/handlers, lib/utils). */
const AEDES_PROTOCOL_ERROR = /not allowed in|only allowed in|too many levels|empty topic|Invalid protocol|packet received not valid|maxInflightInbound/

/** TLS_CERT and TLS_KEY read and checked as a pair now, so a wrong file stops the start with the setting's name. */
async function loadTls (certPath: string, keyPath: string): Promise<{ cert: Buffer, key: Buffer }> {
  const read = async (setting: string, file: string): Promise<Buffer> => await readFile(file).catch((error: Error) => {
    throw new StartupError(`${setting}=${file} cannot be read: ${error.message}`, { cause: error })
  })
  const [cert, key] = [await read('TLS_CERT', certPath), await read('TLS_KEY', keyPath)]
  try {
    createSecureContext({ cert, key })
  } catch (error) {
    throw new StartupError(`TLS_CERT=${certPath} and TLS_KEY=${keyPath} are not a PEM certificate and its private key: ${(error as Error).message}`, { cause: error })
  }
  return { cert, key }
}

function isLoopback (host: string): boolean {
  return host === '127.0.0.1' || host === '::1' || host === 'localhost'
}

export async function createServer (config: Config, options: ServerOptions = {}): Promise<ShepherdServer> {
  const logger = (options.logger ?? createLogger(config.logLevel)).child({ node: config.nodeName })
  await mkdir(config.dataDir, { recursive: true })
  const tls = config.tlsCertPath !== undefined && config.tlsKeyPath !== undefined ? await loadTls(config.tlsCertPath, config.tlsKeyPath) : undefined

  const caPem = await loadFleetCaPem(config, logger)
  let trust: ReturnType<typeof createFleetTrust>
  try {
    trust = createFleetTrust(caPem)
  } catch (error) {
    throw new StartupError(`the Fleet CA (FLEET_CA_PEM, or the file FLEET_CA_PATH names) is not a usable CA certificate: ${(error as Error).message}`, { cause: error })
  }
  // On the embedded database the control socket claims DATA_DIR before the database is opened:
  // a second server, or a CLI command run while this one starts, must not open the same files.
  const control = config.databaseUrl === undefined ? await startControlSocket(config.dataDir) : undefined
  const cleanups: Array<() => Promise<void>> = control === undefined ? [] : [() => control.close()]
  const closeAll = async (): Promise<void> => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup().catch((error: unknown) => logger.error({ err: error }, 'shutdown step failed'))
  }

  try {
    const db = await openDatabase({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, inMemory: options.inMemoryDatabase })
    cleanups.push(() => db.close())
    const applied = await migrateLatest(db.knex)
    if (applied.length > 0) logger.info({ migrations: applied }, 'database migrated')

    const replayGuard: ReplayGuard = config.redisUrl === undefined
      ? createMemoryReplayGuard()
      : createRedisReplayGuard(new Redis(config.redisUrl, { maxRetriesPerRequest: 3 }))
    cleanups.push(() => replayGuard.close())

    const repo = createDeviceRepository(db.knex)
    let disconnectDevice: (serial: string) => void = () => {}
    let deliverQueuedCommands: (serial: string) => void = () => {}
    let catchUpOnAnnouncements: () => Promise<void> = async () => {}
    const revocations = await openNodeChannel(db, {
      revoked: serial => { disconnectDevice(serial) },
      commandQueued: serial => { deliverQueuedCommands(serial) }
    }, logger, () => { catchUpOnAnnouncements().catch((error: unknown) => { logger.error({ err: error }, 'could not catch up on missed announcements') }) })
    cleanups.push(() => revocations.close())
    // Like `publish` below: the domain's events travel on the broker's message bus once it runs.
    let eventBus: EventBus | undefined
    const events: EventSink = { emit: (event) => { eventBus?.emit(event) } }
    const registry = createDeviceRegistry({ repo, announcer: revocations, logger, events })

    // The broker's hooks need the domain, and the domain publishes through the broker: the
    // publish port forwards to the broker once it runs (nothing publishes before that).
    const nodeId = randomUUID()
    let broker: Broker | undefined
    const publish: Publish = async (...args) => {
      if (broker === undefined) throw new Error('broker not started')
      await broker.publish(...args)
    }
    let metricsPipeline: MetricsPipeline | undefined
    const telemetry = createTelemetry({ connectedDevices: () => gateway.connectedDevices(), metricsPipeline: () => metricsPipeline?.state() })
    const metricsHandlers = await createMetricsHandlers(config, {
      logger: logger.child({ component: 'metrics' }), registry: telemetry.registry, knex: db.knex, dataDir: config.dataDir
    })
    const pipeline = metricsPipeline = createMetricsPipeline({
      handlers: metricsHandlers, logger, stats: telemetry.metricsStats, maxAgeSeconds: config.metricsMaxAgeSeconds, queuePoints: config.metricsQueuePoints
    })
    cleanups.push(() => pipeline.close())
    const presence = createPresence({ repo, publish, nodeId, logger, events })
    const authenticator = createDeviceAuthenticator({
      trust, replayGuard, admission: registry.admission, timestampToleranceSeconds: config.timestampToleranceSeconds
    })
    const groupRepo = createGroupRepository(db.knex)
    // an update command's URL is signed anew at each delivery (the updates domain needs commands first)
    let updatesForCommands: Updates | undefined
    const commands = createCommands({
      repo: createCommandRepository(db.knex), findDevice: serial => repo.find(serial), groupMembers: id => groupRepo.members(id), publish, events, logger,
      announceQueued: serials => revocations.announceCommandQueued(serials),
      payloadForDelivery: async command => updatesForCommands === undefined ? command.payload : await updatesForCommands.commandPayload(command)
    })
    const firmwareStore = createFirmwareStore({
      repo: createFirmwareRepository(db.knex), storage: await createFirmwareFiles(config.firmwareDir), maxBytes: config.firmwareMaxBytes, logger
    })
    const downloadUrls = createDownloadUrls({ secret: await loadSecretKeyBase(config.secretKeyBase, config.dataDir), ttlSeconds: config.firmwareUrlTtlSeconds })
    // PUBLIC_URL, or this server as seen from its own machine (the port bound, which tests choose at random)
    let boundHttpPort = config.port
    const publicUrl = (): string => config.publicUrl ?? `${tls === undefined ? 'http' : 'https'}://localhost:${boundHttpPort}`
    const updates = createUpdates({
      repo: createUpdateRepository(db.knex), firmware: firmwareStore, findDevice: serial => repo.find(serial), groupMembers: id => groupRepo.members(id),
      commands, publish, downloadUrl: id => publicUrl() + downloadUrls.path(id), events, logger, stageTimeoutSeconds: config.updateStageTimeoutSeconds
    })
    updatesForCommands = updates
    // observer sessions whose account or file user went away are closed: at once for a change seen
    // here, within OBSERVER_RECHECK_MS for an account removed by the CLI or on another node
    let dropRevokedObservers = (): void => {}
    const passwordFile = config.mqttPasswordFile === undefined ? undefined : await openPasswordFile(config.mqttPasswordFile, logger, () => { dropRevokedObservers() })
    if (passwordFile !== undefined) cleanups.push(async () => { passwordFile.close() })
    const observers = createObservers({ repo: createObserverRepository(db.knex), passwordFile: () => passwordFile?.current() })
    const gateway = createDeviceGateway({
      authenticator, registry, presence, publish, logger, stats: telemetry.stats, metrics: pipeline, commands, updates,
      observers: { verify: observers.verify, stillValid: observers.stillValid, isDevice: async clientId => await repo.find(clientId) !== undefined },
      observerLoginLimit: options.observerLoginLimit
    })
    dropRevokedObservers = () => { gateway.dropRevokedObservers().catch((error: unknown) => { logger.warn({ err: error }, 'could not check the observer sessions') }) }
    const observerRecheck = setInterval(dropRevokedObservers, options.observerRecheckMs ?? OBSERVER_RECHECK_MS)
    observerRecheck.unref()
    cleanups.push(async () => { clearInterval(observerRecheck) })
    disconnectDevice = (serial) => { gateway.disconnectDevice(serial, 'revoked') }
    // commands queued by any node or the CLI (PostgreSQL NOTIFY): the node the device listens on delivers them
    deliverQueuedCommands = (serial) => { if (gateway.isListeningHere(serial, 'commands')) void commands.deliverQueued(serial) }
    catchUpOnAnnouncements = async () => {
      for (const serial of await registry.revokedOnlineOn(nodeId)) disconnectDevice(serial)
      for (const serial of await commands.devicesWithQueued()) deliverQueuedCommands(serial)
    }

    broker = await createBroker({
      id: nodeId,
      redisUrl: config.redisUrl,
      packetLimits: { beforeAuthentication: PRE_AUTH_PACKET_BYTES, afterAuthentication: config.mqttMaxPacketBytes },
      heartbeatIntervalMs: options.heartbeatIntervalMs,
      maxBufferedBytes: options.mqttMaxBufferedBytes,
      onSlowReader: (client, bufferedBytes) => { logger.warn({ clientId: client.id, buffered_bytes: bufferedBytes, reason: 'not_reading' }, 'MQTT connection closed: it stopped reading what it is sent') }
    }, gateway.hooks, gateway.beforeListen, gateway.isAuthenticated)
    const startedBroker = broker
    cleanups.push(() => startedBroker.close())
    gateway.attach(startedBroker.aedes)
    const startedEventBus = eventBus = createEventBus((startedBroker.aedes as unknown as { mq: MessageEmitter }).mq, logger)
    const stopSysTopics = startSysTopics(publish, {
      version: `shepherd version ${VERSION}`,
      startedAt: Date.now(),
      connectedClients: () => startedBroker.aedes.connectedClients,
      connectedDevices: gateway.connectedDevices,
      messages: telemetry.messageCounts
    }, logger, options.sysIntervalMs)
    startedBroker.aedes.on('clientError', (client, error) => {
      // a packet Aedes refuses (a wildcard in a PUBLISH topic, ...) closes the connection: say why;
      // socket errors, keepalive timeouts and refused CONNECTs are logged where they are handled
      if (AEDES_PROTOCOL_ERROR.test(error.message)) logger.warn({ clientId: client.id, reason: 'protocol_error', detail: error.message }, 'MQTT connection closed: the client broke the protocol')
      else logger.debug({ clientId: client.id, err: error }, 'mqtt client error')
    })
    startedBroker.aedes.on('connectionError', (_client, error) => { logger.debug({ err: error }, 'mqtt connection error before CONNECT') })

    // Rows left online by a node that died: swept now when this is the only node (no Redis),
    // otherwise once other nodes had three heartbeats to announce themselves, then periodically.
    const sweep = (): void => {
      presence.sweepDeadNodes(startedBroker.liveNodeIds()).catch((error: unknown) => logger.error({ err: error }, 'presence sweep failed'))
    }
    if (config.redisUrl === undefined) {
      await presence.sweepDeadNodes([])
      const republished = await presence.republishOfflineStatuses()
      if (republished > 0) logger.info({ devices: republished }, 'retained offline statuses published again (the in-process broker keeps none across restarts)')
    }
    const sweeper = setInterval(sweep, 3 * startedBroker.heartbeatIntervalMs)
    sweeper.unref()
    const expiry = setInterval(() => {
      commands.expireDue().then((expired) => {
        if (expired > 0) logger.info({ commands: expired }, 'commands expired unanswered')
      }, (error: unknown) => { logger.error({ err: error }, 'command expiry failed') })
      updates.failStale().catch((error: unknown) => { logger.error({ err: error }, 'update timeout sweep failed') })
    }, options.expiryIntervalMs ?? 1000)
    expiry.unref()

    const tokens = createApiTokens(createApiTokenRepository(db.knex))
    const devices = createDeviceAdmin({ repo, registry, kicker: revocations, publish, events })
    const metricsRepo = createMetricsRepository(db.knex)
    const http = await buildHttpApp({
      logger, broker: startedBroker, tls,
      // the WebSocket framing of a CONNECT adds a few bytes per frame; 1 KiB covers a client that splits it
      webSocketLimits: { maxPayloadBytes: config.mqttMaxPacketBytes, preAuthenticationBytes: PRE_AUTH_PACKET_BYTES + 1024, isAuthenticated: gateway.isAuthenticated, stats: telemetry.stats },
      tokens,
      onResponse: telemetry.observeHttpRequest,
      routes: [
        healthRoutes({ countOnlineDevices: registry.countOnline }),
        eventRoutes({ subscribe: startedEventBus.subscribe, heartbeatMs: options.sseHeartbeatMs ?? 15_000 }),
        metricsRoutes({ metrics: () => telemetry.registry.metrics(), tokens, metricsToken: config.metricsToken }),
        deviceRoutes({ devices, latestMetrics: serial => metricsRepo.latest(serial) }),
        deviceMetricsRoutes({ metrics: metricsRepo, deviceExists: async serial => await devices.get(serial) !== undefined }),
        groupRoutes({ groups: createGroups(groupRepo) }),
        commandRoutes({ commands }),
        firmwareRoutes({ store: firmwareStore, urls: downloadUrls, maxBytes: config.firmwareMaxBytes }),
        updateRoutes({ updates })
      ]
    })

    control?.serve({
      migrate: async () => [], // done above, at start
      revoke: async ({ serial }) => await registry.setRevoked(String(serial), true),
      'token.create': async ({ name }) => await tokens.create(String(name)),
      'token.list': async () => await tokens.list(),
      'token.revoke': async ({ name }) => await tokens.revoke(String(name)),
      'command.issue': async ({ serial, request }) => await commands.issue(String(serial), request as CommandRequest),
      'command.get': async ({ id }) => await commands.get(String(id)) ?? null,
      'observer.add': async ({ name }) => await observers.add(String(name)),
      'observer.list': async () => await observers.list(),
      'observer.remove': async ({ name }) => { const removed = await observers.remove(String(name)); dropRevokedObservers(); return removed },
      'firmware.register': async ({ meta, staged }) => await firmwareStore.register(meta as MetaInput, staged as StagedFile),
      'firmware.versionTaken': async ({ meta }) => await firmwareStore.versionTaken(meta as FirmwareMeta) ?? null
    })

    let tcp: TcpListener | undefined
    let closing: Promise<void> | undefined

    async function shutdown (): Promise<void> {
      clearInterval(sweeper)
      clearInterval(expiry)
      stopSysTopics()
      const httpClosed = http.server.listening ? http.close() : Promise.resolve()
      const tcpClosed = tcp?.close()
      const count = await presence.shutdown()
      logger.info({ devices: count }, 'devices marked offline (server_shutdown)')
      await startedBroker.close()
      await Promise.all([httpClosed, tcpClosed, presence.settled()])
      await pipeline.close()
      await closeAll()
    }

    return {
      config,
      logger,
      db,
      broker: startedBroker,
      http,
      nodeId,
      tokens,
      events: startedEventBus,
      commands,
      updates,
      observers,
      async listen (ports) {
        await http.ready()
        const httpPort = boundHttpPort = await listenOn(http.server, ports?.http ?? config.port, config.host, 'PORT')
        if (ports !== undefined || config.mqttPort !== 0) tcp = await startTcpListener(startedBroker, { host: config.host, port: ports?.mqtt ?? config.mqttPort, tls })
        if (tls === undefined && !isLoopback(config.host)) {
          logger.warn({ host: config.host }, 'listening without TLS on a non-loopback address: device credentials cross the network in the clear; set TLS_CERT/TLS_KEY or terminate TLS in front of Shepherd')
        }
        logger.info({ http: httpPort, mqtt: tcp?.port ?? 'off', tls: tls !== undefined, database: db.kind, redis: config.redisUrl !== undefined, node_id: nodeId }, 'Shepherd listening')
        return { httpPort, mqttPort: tcp?.port }
      },
      close () {
        closing ??= shutdown()
        return closing
      },
      settled: () => presence.settled(),
      revokeDevice: (serial) => registry.setRevoked(serial, true),
      reloadPasswordFile: async () => { await passwordFile?.reload() },
      metrics: () => telemetry.registry.metrics()
    }
  } catch (error) {
    await closeAll()
    throw error
  }
}
