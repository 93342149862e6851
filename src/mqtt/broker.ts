// The embedded Aedes broker: persistence and pub/sub in process (with an exact-topic retained
// index), or in Redis (aedes-persistence-redis + mqemitter-redis) so that several Shepherd nodes
// act as one broker. Offers a promise `publish` port and `handleConnection` for the listeners.
import type { Duplex } from 'node:stream'
import type { IncomingMessage } from 'node:http'
import { Aedes, type AedesOptions, type Client } from 'aedes'
import memoryPersistence from 'aedes-persistence'
import redisPersistence from 'aedes-persistence-redis'
import mqemitter from 'mqemitter'
import mqemitterRedis from 'mqemitter-redis'
import { Redis } from 'ioredis'
import type { Publish } from '../ports.js'
import { withRetainedIndex, type RetainedPersistence } from './retained-index.js'
import { limitPacketSize, type PacketLimits } from './packet-limit.js'
import { MAX_BUFFERED_BYTES, neverWaitForDrain } from './slow-readers.js'

export interface BrokerSettings {
  /** This node's id: Aedes's broker id, also stored as the node holding a device's connection. */
  id: string
  redisUrl: string | undefined
  packetLimits: PacketLimits
  /** How often nodes announce themselves; a node silent for 3 intervals is considered gone. */
  heartbeatIntervalMs?: number
  /** Bytes waiting to be sent to a connection before it is closed as not reading (default 8 MiB). */
  maxBufferedBytes?: number
  /** A connection closed because it stopped reading. */
  onSlowReader? (client: Client, bufferedBytes: number): void
}

/** Hooks and handlers installed before the broker starts listening. */
export type BrokerHooks = Pick<AedesOptions, 'preConnect' | 'authenticate' | 'authorizePublish' | 'authorizeSubscribe' | 'authorizeForward'>

/** mqemitter's subscription API, which Aedes uses for its internal `$SYS/<id>/…` messages. */
export interface MessageBus {
  on (topic: string, handler: (packet: { topic: string, payload?: unknown }, done: () => void) => void, done?: () => void): unknown
}

export interface Broker {
  readonly aedes: Aedes
  readonly id: string
  readonly bus: MessageBus
  readonly heartbeatIntervalMs: number
  publish: Publish
  /** `remoteAddress`: of a stream that is not a socket (MQTT over WebSocket), for the logs. */
  handleConnection (stream: Duplex, remoteAddress?: string): Client
  /** Broker ids of other nodes heard from within three heartbeats. */
  liveNodeIds (): string[]
  close (): Promise<void>
}

async function connectRedis (url: string): Promise<Redis> {
  const redis = new Redis(url, { maxRetriesPerRequest: 3 })
  await new Promise<void>((resolve, reject) => {
    redis.once('ready', resolve)
    redis.once('error', (error) => { redis.disconnect(); reject(new Error(`cannot reach Redis at REDIS_URL: ${error.message}`)) })
  })
  return redis
}

export async function createBroker (settings: BrokerSettings, hooks: BrokerHooks, beforeListen: (bus: MessageBus, brokerId: string) => void, isAuthenticated: (client: Client) => boolean): Promise<Broker> {
  const heartbeatIntervalMs = settings.heartbeatIntervalMs ?? 10_000
  const id = settings.id
  let mq: MessageBus & { close (cb: () => void): void }
  let persistence: unknown
  let redis: Redis | undefined
  if (settings.redisUrl !== undefined) {
    // Connections are handed over ready: mqemitter-redis subscribes at once, and a SUBSCRIBE
    // queued before ioredis's ready check makes that check fail ("Connection in subscriber mode").
    const [sub, pub, store] = await Promise.all([0, 1, 2].map(() => connectRedis(settings.redisUrl!)))
    redis = store
    mq = mqemitterRedis({ subConn: sub, pubConn: pub, matchEmptyLevels: true })
    persistence = redisPersistence({ conn: redis })
  } else {
    mq = mqemitter({ concurrency: 100, matchEmptyLevels: true })
    persistence = withRetainedIndex((memoryPersistence as unknown as () => RetainedPersistence)())
  }
  beforeListen(mq, id)

  const aedes = await Aedes.createBroker({
    ...hooks,
    id,
    mq,
    persistence,
    heartbeatInterval: heartbeatIntervalMs,
    connectTimeout: 10_000
  })

  const publish: Publish = async (topic, payload, { qos, retain }) => {
    await new Promise<void>((resolve, reject) => {
      aedes.publish({
        cmd: 'publish', topic, payload: typeof payload === 'string' ? Buffer.from(payload) : payload, qos, retain, dup: false
      }, (error?: Error) => { error ? reject(error) : resolve() })
    })
  }

  let closing: Promise<void> | undefined
  return {
    aedes,
    id,
    bus: mq,
    heartbeatIntervalMs,
    publish,
    handleConnection (stream, remoteAddress) {
      // Aedes keeps its second argument as client.req for the connection's life, and only the
      // remote address is read from it: the whole upgrade request would keep ~1 KiB per device.
      // A TCP socket's own address is taken now too: once the socket is destroyed it reads undefined.
      const address = remoteAddress ?? (stream as { remoteAddress?: string }).remoteAddress
      const request = address === undefined ? undefined : { socket: { remoteAddress: address } } as unknown as IncomingMessage
      const client = aedes.handle(stream, request)
      limitPacketSize(client, settings.packetLimits, isAuthenticated)
      neverWaitForDrain(client, settings.maxBufferedBytes ?? MAX_BUFFERED_BYTES, settings.onSlowReader ?? (() => {}))
      return client
    },
    liveNodeIds () {
      const cutoff = Date.now() - 3 * heartbeatIntervalMs
      return Object.entries(aedes.brokers).filter(([, seen]) => seen >= cutoff).map(([brokerId]) => brokerId)
    },
    close () {
      closing ??= (async () => {
        await new Promise<void>(resolve => { aedes.close(() => resolve()) })
        const destroy = (persistence as { destroy?: () => Promise<void> }).destroy
        if (typeof destroy === 'function') await destroy.call(persistence)
        if (redis !== undefined && redis.status !== 'end') await redis.quit()
      })()
      return closing
    }
  }
}
