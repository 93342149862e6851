// The load generator of the connect benchmark: connects every identity with a bounded number of
// CONNECTs in flight and records CONNECT→CONNACK latency. A device session is complete when its
// SUBACK (and, on the baseline, the PUBACK of its own retained status) has arrived.
//  - Shepherd devices are the reference client (connectDevice: signed credential, will, SUBSCRIBE
//    to commands/firmware/errors); the server publishes their retained status itself.
//  - Baseline devices are plain mqtt.js clients sending the same CONNECT (client id, username,
//    credential, will) and SUBSCRIBE, plus their own retained {"status":"online"} (QoS 1).
import mqtt, { type MqttClient } from 'mqtt'
import { connectDevice, deviceWill, devicePassword, type DeviceIdentity } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { forEachConcurrently } from '../../src/device-client/fleet.js'

const KEEPALIVE_SECONDS = 30
const CONNECT_TIMEOUT_MS = 10_000
const SUBACK_FAILURE = 0x80

export interface Session {
  readonly mqtt: MqttClient
  /** Settles when the session's SUBACK (and PUBACK) arrived, or the connection closed first. */
  readonly done: Promise<void>
}

/** Connects one device; resolves at CONNACK. */
export type Connector = (identity: DeviceIdentity) => Promise<Session>

export interface LoadResult {
  sessions: Session[]
  /** CONNECT→CONNACK of each accepted device (includes signing the credential), ms. */
  latenciesMs: number[]
  refusals: Error[]
  /** Accepted devices whose SUBSCRIBE or status publish failed. */
  sessionFailures: Error[]
}

function subscriptions (serial: string): string[] {
  return [deviceTopic(serial, 'commands'), deviceTopic(serial, 'firmware'), deviceTopic(serial, 'errors')]
}

/** Rejects when the connection closes; never settles otherwise. */
export function closeOf (client: MqttClient, what: string): Promise<never> {
  const closed = new Promise<never>((_resolve, reject) => { client.once('close', () => { reject(new Error(`connection closed before ${what}`)) }) })
  closed.catch(() => {})
  return closed
}

export function shepherdDevice (url: string): Connector {
  return async (identity) => {
    const device = await connectDevice({ url, identity, keepaliveSeconds: KEEPALIVE_SECONDS, connectTimeoutMs: CONNECT_TIMEOUT_MS })
    const client = device.mqtt
    // connectDevice sent the SUBSCRIBE from its 'connect' handler; its SUBACK cannot have been read yet
    const suback = new Promise<void>((resolve, reject) => {
      client.on('packetreceive', function onPacket (packet) {
        if (packet.cmd !== 'suback') return
        client.off('packetreceive', onPacket)
        if (packet.granted.some(code => code === SUBACK_FAILURE)) reject(new Error('subscription refused'))
        else resolve()
      })
    })
    return { mqtt: client, done: Promise.race([suback, closeOf(client, 'SUBACK')]) }
  }
}

export function baselineDevice (url: string): Connector {
  return async (identity) => {
    const serial = identity.serial
    const client = mqtt.connect(url, {
      clientId: serial,
      username: serial,
      password: devicePassword(identity),
      protocolVersion: 4,
      clean: true,
      keepalive: KEEPALIVE_SECONDS,
      reconnectPeriod: 0,
      connectTimeout: CONNECT_TIMEOUT_MS,
      will: deviceWill(serial)
    })
    const closed = closeOf(client, 'SUBACK and PUBACK')
    await Promise.race([
      new Promise<void>((resolve, reject) => {
        client.once('connect', () => { resolve() })
        client.once('error', reject)
      }),
      closeOf(client, 'CONNACK')
    ]).catch((error: unknown) => { client.end(true); throw error })
    const session = Promise.all([
      client.subscribeAsync(subscriptions(serial), { qos: 1 }).then((granted) => {
        if (granted.some(grant => grant.qos === SUBACK_FAILURE)) throw new Error('subscription refused')
      }),
      client.publishAsync(deviceTopic(serial, 'status'), JSON.stringify({ status: 'online' }), { qos: 1, retain: true })
    ])
    return { mqtt: client, done: Promise.race([session.then(() => {}), closed]) }
  }
}

export async function connectAll (
  identities: readonly DeviceIdentity[], concurrency: number, connect: Connector, onProgress?: (done: number) => void
): Promise<LoadResult> {
  const result: LoadResult = { sessions: [], latenciesMs: [], refusals: [], sessionFailures: [] }
  await forEachConcurrently(identities, concurrency, async (identity) => {
    const begun = performance.now()
    try {
      const session = await connect(identity)
      result.latenciesMs.push(performance.now() - begun)
      result.sessions.push(session)
    } catch (error) {
      result.refusals.push(error as Error)
    }
    onProgress?.(result.sessions.length + result.refusals.length)
  })
  for (const outcome of await Promise.allSettled(result.sessions.map(session => session.done))) {
    if (outcome.status === 'rejected') result.sessionFailures.push(outcome.reason as Error)
  }
  return result
}

export async function disconnectAll (sessions: readonly Session[]): Promise<void> {
  await Promise.all(sessions.map(session => session.mqtt.endAsync(true)))
}
