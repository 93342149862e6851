// Translates between Aedes and the domain for devices: the authenticate hook runs the device
// authenticator and maps refusals to CONNACK codes; the authorize hooks apply the device ACL;
// broker events feed presence and the info topic. No business rule lives here.
import type { Aedes, AuthenticateError, AuthErrorCode, Client } from 'aedes'
import type { BrokerHooks, MessageBus } from './broker.js'
import { REFUSAL_RETURN_CODES, parseDeviceCredential, type DeviceAuthenticator, type DeviceCredential } from '../auth/device-authenticator.js'
import { OBSERVER_REFUSAL_CODES, authorizeObserverSubscribe, isBridgeNotification, observerMayReceive } from '../observers/acl.js'
import { authorizeDevicePublish, authorizeDeviceSubscribe, isDeviceWillTopic } from '../devices/acl.js'
import type { DeviceRegistry } from '../devices/device-registry.js'
import type { DisconnectReason } from '../devices/types.js'
import type { Presence } from '../presence/presence.js'
import type { Logger } from '../logger.js'
import type { Publish } from '../ports.js'
import type { MetricsPipeline } from '../metrics/pipeline.js'
import type { Commands } from '../commands/commands.js'
import type { Updates } from '../firmware/updates.js'
import type { ObserverGrant } from '../observers/observers.js'
import { createLoginLimit, type LoginLimitOptions } from '../observers/login-limit.js'
import { PacketTooLarge } from './packet-limit.js'
import { deviceTopic, isValidSerial, parseDeviceTopic } from '../topics.js'
import type { ConnectRefusalReason } from '../telemetry.js'

/** What we know about an accepted device connection. */
interface DeviceSession {
  serial: string
  connectionId: string
  connectedAt: Date
  /** Set when the server closes the connection on purpose, so the disconnect carries the reason. */
  closeReason?: DisconnectReason
  /** A will on another topic than the device's own status: dropped, reported after connect. */
  rejectedWillTopic?: string
}

/** Aedes internals read here: set when the client sent DISCONNECT. */
interface AedesClientInternals { _disconnected?: boolean }

/** Aedes's map of the clients connected to this node (public in its JS, missing from its types). */
function clientsOf (aedes: Aedes | undefined): Record<string, Client | undefined> {
  return (aedes as { clients?: Record<string, Client> } | undefined)?.clients ?? {}
}

/** Why a will on another topic than the device's own status is dropped (log line and errors report). */
const WILL_REFUSED = 'a will may only be set on the device\'s own status topic; it was dropped'

/** Publishes the server keeps to itself: a refused device publish is rerouted here and dropped. */
export const DROPPED_TOPIC = '$shepherd/dropped'

export interface GatewayStats {
  connectAccepted (): void
  connectRefused (reason: ConnectRefusalReason): void
  /** A PUBLISH received from a client. */
  messageReceived (): void
  /** A message forwarded to a client. */
  messageDelivered (): void
}

export interface DeviceGatewayDeps {
  authenticator: DeviceAuthenticator
  registry: DeviceRegistry
  presence: Presence
  publish: Publish
  logger: Logger
  stats: GatewayStats
  /** Takes the devices' own `metrics` publishes (contract §3). */
  metrics?: Pick<MetricsPipeline, 'ingest'>
  /** Delivers queued commands when a device listens on its `commands` topic, records its `replies`. */
  commands?: Pick<Commands, 'deliverPending' | 'recordReply'>
  /** Follows OTA updates: `update_status` reports, firmware versions in `info`, devices listening for offers. */
  updates?: Pick<Updates, 'recordStatus' | 'infoReported' | 'deviceListening'>
  /** Read-only logins for third-party tools; without it, a password that is no device credential is refused. */
  observers?: {
    verify (name: string, password: Buffer): Promise<ObserverGrant | undefined>
    /** Whether the grant of a live session still holds (the account or file user was not removed or changed). */
    stillValid (name: string, grant: ObserverGrant): Promise<boolean>
    /** Whether `clientId` is a registered device's serial (an observer may not take its session). */
    isDevice (clientId: string): Promise<boolean>
  }
  /** How many observer password checks run and wait at once (createLoginLimit's defaults without it). */
  observerLoginLimit?: LoginLimitOptions
}

function remoteAddress (client: Client): string | undefined {
  const request = client.req as { socket?: { remoteAddress?: string } } | undefined
  const conn = client.conn as { remoteAddress?: string }
  return request?.socket?.remoteAddress ?? conn.remoteAddress
}

function authError (reason: string, detail: string, returnCode: number): AuthenticateError {
  const error = new Error(`${reason}: ${detail}`) as AuthenticateError
  error.returnCode = returnCode as AuthErrorCode
  return error
}

export function createDeviceGateway (deps: DeviceGatewayDeps) {
  const { authenticator, registry, presence, publish, logger, stats, metrics, commands, updates, observers } = deps
  const observerLogins = createLoginLimit(deps.observerLoginLimit)
  const sessions = new WeakMap<Client, DeviceSession>()
  /** Observer logins, by client: the account name. */
  const observerSessions = new WeakMap<Client, string>()
  const observerGrants = new WeakMap<Client, ObserverGrant>()
  /** Open observer connections (few), to check them against their accounts without walking every device's. */
  const observerClients = new Set<Client>()
  /** Device connections that are ready (counted for telemetry and $SYS). */
  const readyDevices = new Set<Client>()
  /** CONNECT packets between preConnect and authenticate, to drop the credential once checked, with the password parsed once. */
  const connects = new WeakMap<Client, { packet: { password?: Buffer }, credential: DeviceCredential | undefined, emptyIdWithSession: boolean }>()
  /** The latest accepted connection per serial, until it is ready (a takeover in progress). */
  const takers = new Map<string, Client>()
  let aedes: Aedes | undefined

  function forgetCredential (client: Client): void {
    // The parser keeps the CONNECT packet for the connection's life: do not keep the credential in it.
    const connect = connects.get(client)
    if (connect !== undefined) connect.packet.password = undefined
    connects.delete(client)
  }

  /** A login with a password that is no device credential: an observer's, or refused. */
  async function authenticateObserver (client: Client, username: string | undefined, password: Buffer | undefined): Promise<AuthenticateError | undefined> {
    const address = remoteAddress(client)
    const refuse = (reason: keyof typeof OBSERVER_REFUSAL_CODES, detail: string): AuthenticateError => {
      stats.connectRefused(reason)
      logger.warn({ observer: username, clientId: client.id, reason, detail, remote: address }, 'observer connection refused')
      return authError(reason, detail, OBSERVER_REFUSAL_CODES[reason])
    }
    const attempt = username === undefined || username === '' || password === undefined
      ? { admitted: true as const, value: undefined }
      : await observerLogins.run(async () => await observers!.verify(username, password))
    if (!attempt.admitted) return refuse('observer_logins_busy', attempt.detail)
    const grant = attempt.value
    if (grant === undefined) {
      if (username === client.id && isValidSerial(username)) {
        // shaped like a device's login (client id = username = a serial): said as a device refusal
        const detail = 'password is neither a device credential (a JSON object with cert, at most 16 KiB) nor an observer\'s password'
        stats.connectRefused('not_a_device_credential')
        logger.warn({ serial: username, reason: 'not_a_device_credential', detail, remote: address }, 'device connection refused')
        return authError('not_a_device_credential', detail, REFUSAL_RETURN_CODES.not_a_device_credential)
      }
      return refuse('observer_bad_credentials', 'unknown observer or wrong password')
    }
    if (isValidSerial(client.id) && await observers!.isDevice(client.id)) {
      return refuse('observer_client_id_is_a_device', 'the client id is a device\'s serial; an observer may not take over a device\'s session')
    }
    observerSessions.set(client, username!)
    observerGrants.set(client, grant)
    observerClients.add(client)
    client.conn.once('close', () => { observerClients.delete(client) })
    logger.info({ observer: username, clientId: client.id, remote: address }, 'observer connected')
    return undefined
  }

  function reportRejection (serial: string, topic: string, reason: string): void {
    const leaf = parseDeviceTopic(topic)
    const payload = JSON.stringify({ topic: leaf?.serial === serial ? leaf.leaf : topic, reason, at: new Date().toISOString() })
    publish(deviceTopic(serial, 'errors'), payload, { qos: 0, retain: false }).catch((error: unknown) => {
      logger.warn({ serial, err: error }, 'could not publish to the errors topic')
    })
  }

  const hooks: BrokerHooks = {
    preConnect (client, packet, callback) {
      // The server owns presence: it publishes the device's status itself on every disconnect, so
      // the will is taken out of the CONNECT before Aedes stores it (a stored will would otherwise
      // be published after a takeover, or by another node after this one dies, as a stale "offline").
      if (packet.will != null) {
        const willTopic = packet.will.topic
        // undefined rather than delete: a deleted property turns the packet, which the parser keeps
        // for the connection's life, into a dictionary-mode object (~0.8 KiB more per device)
        packet.will = undefined
        if (packet.username !== undefined && !isDeviceWillTopic(packet.username, willTopic)) {
          (client as { shepherdRejectedWill?: string }).shepherdRejectedWill = willTopic
        }
      }
      // Observers get clean sessions: nothing is queued for a tool that went away (MQTT lets the
      // server answer sessionPresent 0; a client, or a bridge, subscribes again on every connect).
      const credential = parseDeviceCredential(packet.password)
      // MQTT-3.1.3-8: an empty client id asks for a session only the id could name (checked before clean is forced)
      const emptyIdWithSession = packet.clientId === '' && !packet.clean
      if (observers !== undefined && credential === undefined) packet.clean = true
      connects.set(client, { packet, credential, emptyIdWithSession })
      callback(null, true)
    },

    authenticate (client, username, password, done) {
      const failed = (error: unknown): void => {
        logger.error({ err: error, remote: remoteAddress(client) }, 'authentication failed unexpectedly')
        done(authError('server_unavailable', 'server unavailable', 3), false)
      }
      const connect = connects.get(client)
      if (connect?.emptyIdWithSession === true) {
        forgetCredential(client)
        stats.connectRefused('empty_client_id_with_session')
        logger.warn({ username, reason: 'empty_client_id_with_session', remote: remoteAddress(client) }, 'connection refused: an empty client id needs a clean session (MQTT-3.1.3-8)')
        done(authError('empty_client_id_with_session', 'an empty client id needs a clean session', 2), false)
        return
      }
      const credential = connect === undefined ? parseDeviceCredential(password) : connect.credential
      if (observers !== undefined && credential === undefined) {
        authenticateObserver(client, username, password).then((refusal) => {
          forgetCredential(client)
          done(refusal ?? null, refusal === undefined)
        }, failed)
        return
      }
      authenticator.authenticate({ clientId: client.id, username, password, credential }).then((verdict) => {
        forgetCredential(client)
        if (!verdict.ok) {
          stats.connectRefused(verdict.reason)
          logger.warn({ serial: verdict.serial, reason: verdict.reason, detail: verdict.detail, remote: remoteAddress(client) }, 'device connection refused')
          done(authError(verdict.reason, verdict.detail, REFUSAL_RETURN_CODES[verdict.reason]), false)
          return
        }
        // Not yet a takeover: this client may still go away before Aedes registers it (and only
        // then closes the previous connection). The previous connection's disconnect decides.
        takers.set(verdict.serial, client)
        client.conn.once('close', () => { if (takers.get(verdict.serial) === client) takers.delete(verdict.serial) })
        const rejectedWillTopic = (client as { shepherdRejectedWill?: string }).shepherdRejectedWill
        sessions.set(client, { serial: verdict.serial, connectionId: crypto.randomUUID(), connectedAt: new Date(), rejectedWillTopic })
        // logged here, once the serial is known: the errors report waits until the device listens
        if (rejectedWillTopic !== undefined) logger.warn({ serial: verdict.serial, topic: rejectedWillTopic, reason: WILL_REFUSED }, 'device will refused')
        stats.connectAccepted()
        done(null, true)
      }, failed)
    },

    authorizePublish (client, packet, callback) {
      stats.messageReceived()
      const session = client === null ? undefined : sessions.get(client)
      if (session === undefined) {
        const observer = client === null ? undefined : observerSessions.get(client)
        if (observer !== undefined && client !== null && isBridgeNotification(client.id, packet.topic)) {
          packet.topic = DROPPED_TOPIC
          packet.retain = false
          return callback(null)
        }
        // MQTT 3.1.1 closes the connection on an unauthorized publish (Aedes does so on the error)
        logger.warn({ observer, clientId: client?.id, topic: packet.topic, reason: 'observers publish nothing' }, 'observer publish refused; connection closed')
        return callback(new Error('not authorized to publish'))
      }
      const decision = authorizeDevicePublish(session.serial, packet.topic)
      if (!decision.ok) {
        // MQTT-3.3.5-2 lets the server acknowledge and drop an unauthorized publish; the device
        // stays connected and learns why on its errors topic.
        logger.warn({ serial: session.serial, topic: packet.topic, reason: decision.reason }, 'device publish refused')
        reportRejection(session.serial, packet.topic, decision.reason)
        packet.topic = DROPPED_TOPIC
        packet.retain = false
        packet.payload = Buffer.alloc(0)
      } else if (decision.leaf === 'metrics' && metrics !== undefined && client !== null) {
        // Ingested before the callback: Aedes sends the PUBACK after it, so a PUBACK means the
        // points are validated and queued. While the pipeline is saturated the callback waits,
        // and Aedes reads nothing more from this connection until it is called.
        const { serial } = session
        const topic = packet.topic
        metrics.ingest({
          serial,
          payload: packet.payload,
          qos: packet.qos,
          gone: () => client.closed,
          report: (reason) => {
            logger.debug({ serial, reason }, 'metric points dropped')
            reportRejection(serial, topic, reason)
          },
          disconnect: (reason) => {
            logger.warn({ serial, reason: 'overloaded', detail: reason }, 'device disconnected without acknowledging its metrics publish')
            client.close()
          }
        }, () => { callback(null) })
        return
      }
      callback(null)
    },

    authorizeSubscribe (client, subscription, callback) {
      const session = sessions.get(client)
      const observer = observerSessions.get(client)
      const decision = session !== undefined
        ? authorizeDeviceSubscribe(session.serial, subscription.topic)
        : observer !== undefined ? authorizeObserverSubscribe(subscription.topic) : { ok: false as const, reason: 'not authorized to subscribe' }
      if (!decision.ok) {
        logger.warn({ serial: session?.serial, observer, topic: subscription.topic, reason: decision.reason }, 'subscription refused')
        return callback(null, null) // SUBACK 0x80 for this filter
      }
      callback(null, subscription)
    },

    authorizeForward (client, packet) {
      // Backstop: whatever a device's subscriptions match, it only ever receives its own topics.
      const session = sessions.get(client)
      const allowed = session !== undefined ? authorizeDeviceSubscribe(session.serial, packet.topic).ok : observerSessions.has(client) && observerMayReceive(packet.topic)
      if (!allowed) return null
      stats.messageDelivered()
      return packet
    }
  }

  function closeReasonOf (client: Client, session: DeviceSession): DisconnectReason {
    if (session.closeReason !== undefined) return session.closeReason
    if (presence.isShuttingDown()) return 'server_shutdown' // the broker closes every connection
    if ((client as AedesClientInternals)._disconnected === true) return 'clean'
    // closed by Aedes for a newer accepted connection of the same device that is still there
    const taker = takers.get(session.serial)
    if (taker !== undefined && taker !== client && !taker.closed) return 'taken_over'
    return 'lost'
  }

  /** Subscribes to the broker's own messages before it listens (takeovers from other nodes). */
  function beforeListen (bus: MessageBus, brokerId: string): void {
    bus.on('$SYS/+/new/clients', (packet, done) => {
      const fromNode = packet.topic.split('/')[1]
      const client = fromNode === brokerId ? undefined : clientsOf(aedes)[String(packet.payload)]
      const session = client === undefined ? undefined : sessions.get(client)
      if (session !== undefined) session.closeReason = 'taken_over'
      done()
    })
  }

  function reportRejectedWill (session: DeviceSession): void {
    const topic = session.rejectedWillTopic
    if (topic === undefined) return
    session.rejectedWillTopic = undefined
    reportRejection(session.serial, topic, WILL_REFUSED)
  }

  async function recordInfo (session: DeviceSession, payload: Buffer): Promise<{ ok: true } | { ok: false, reason: string }> {
    // an empty retained message clears the retained info (MQTT's way); the registry keeps what it has
    if (payload.length === 0) return { ok: true }
    const result = await registry.recordInfo(session.serial, payload)
    const version = result.ok ? result.firmware.firmware_version : undefined
    if (updates !== undefined && version !== undefined) await updates.infoReported(session.serial, version, session.connectedAt)
    return result
  }

  /** The device listens for firmware offers: its offer in progress goes out again, with a fresh download URL. */
  function offerAgain (serial: string): void {
    updates?.deviceListening(serial).catch((error: unknown) => { logger.error({ serial, err: error }, 'could not offer the firmware update again') })
  }

  function attach (broker: Aedes): void {
    aedes = broker
    const tooLarge = (client: Client, error: Error): void => {
      if (!(error instanceof PacketTooLarge)) return
      const session = sessions.get(client)
      if (session === undefined) stats.connectRefused('packet_too_large')
      logger.warn({ serial: session?.serial, clientId: client.id, reason: 'packet_too_large', detail: error.message, remote: remoteAddress(client) },
        session === undefined ? 'connection refused: a packet over the limit before authentication' : 'connection closed: a packet over MQTT_MAX_PACKET_SIZE')
    }
    broker.on('connectionError', tooLarge)
    broker.on('clientError', tooLarge)
    broker.on('clientReady', (client) => {
      const session = sessions.get(client)
      if (session === undefined) return
      if (takers.get(session.serial) === client) takers.delete(session.serial)
      readyDevices.add(client)
      void presence.deviceConnected(session.serial, session.connectionId)
      // The report goes out (QoS 0, not retained) once the device listens on its errors topic: a
      // clean session cannot have subscribed before its CONNACK, a restored one already has.
      const restored = (client as { subscriptions?: Record<string, unknown> }).subscriptions ?? {}
      if (Object.hasOwn(restored, deviceTopic(session.serial, 'errors'))) reportRejectedWill(session)
      if (Object.hasOwn(restored, deviceTopic(session.serial, 'commands'))) void commands?.deliverPending(session.serial)
      if (Object.hasOwn(restored, deviceTopic(session.serial, 'firmware'))) offerAgain(session.serial)
    })
    broker.on('subscribe', (subscriptions, client) => {
      const session = sessions.get(client)
      if (session === undefined) return
      // a refused filter comes with qos 128
      const granted = (leaf: 'errors' | 'commands' | 'firmware'): boolean => subscriptions.some(s => s.topic === deviceTopic(session.serial, leaf) && (s.qos as number) !== 128)
      if (session.rejectedWillTopic !== undefined && granted('errors')) reportRejectedWill(session)
      if (commands !== undefined && granted('commands')) void commands.deliverPending(session.serial)
      if (granted('firmware')) offerAgain(session.serial)
    })
    broker.on('clientDisconnect', (client) => {
      const observer = observerSessions.get(client)
      if (observer !== undefined) logger.info({ observer, clientId: client.id }, 'observer disconnected')
      const session = sessions.get(client)
      if (session === undefined) return
      readyDevices.delete(client)
      const reason = closeReasonOf(client, session)
      logger.info({ serial: session.serial, reason }, 'device disconnected')
      void presence.deviceDisconnected(session.serial, session.connectionId, reason)
    })
    broker.on('publish', (packet, client) => {
      const session = client === null ? undefined : sessions.get(client)
      if (session === undefined) return
      const { serial } = session
      let recorded: Promise<{ ok: true } | { ok: false, reason: string }>
      if (packet.topic === deviceTopic(serial, 'info')) recorded = recordInfo(session, packet.payload as Buffer)
      else if (commands !== undefined && packet.topic === deviceTopic(serial, 'replies')) recorded = commands.recordReply(serial, packet.payload as Buffer)
      else if (updates !== undefined && packet.topic === deviceTopic(serial, 'update_status')) recorded = updates.recordStatus(serial, packet.payload as Buffer)
      else return
      recorded.then((result) => {
        if (result.ok) return
        logger.warn({ serial, topic: packet.topic, reason: result.reason }, 'device message refused')
        reportRejection(serial, packet.topic, result.reason)
      }, (error: unknown) => { logger.error({ serial, topic: packet.topic, err: error }, 'could not record a device message') })
    })
  }

  /** Closes the device's connection on this node, if it has one, with `reason` as its disconnect reason. */
  function disconnectDevice (serial: string, reason: DisconnectReason): boolean {
    const client = clientsOf(aedes)[serial]
    const session = client === undefined ? undefined : sessions.get(client)
    if (client === undefined || session === undefined) return false
    session.closeReason = reason
    client.close()
    return true
  }

  /** Closes the observer sessions whose account or password-file user was removed or changed since they logged in. */
  async function dropRevokedObservers (): Promise<void> {
    for (const client of [...observerClients]) {
      const grant = observerGrants.get(client)!
      const name = observerSessions.get(client)!
      if (client.closed || await observers!.stillValid(name, grant)) continue
      logger.info({ observer: name, clientId: client.id, reason: 'observer_removed' }, 'observer disconnected: its account or password was removed or changed')
      client.close()
    }
  }

  return {
    hooks,
    beforeListen,
    attach,
    disconnectDevice,
    dropRevokedObservers,
    /** Whether the device's connection is on this node and subscribed to this topic of its own. */
    isListeningHere (serial: string, leaf: 'commands'): boolean {
      const client = clientsOf(aedes)[serial]
      return client !== undefined && sessions.has(client) && Object.hasOwn((client as { subscriptions?: Record<string, unknown> }).subscriptions ?? {}, deviceTopic(serial, leaf))
    },
    isAuthenticated: (client: Client) => sessions.has(client) || observerSessions.has(client),
    /** Device connections ready on this node. */
    connectedDevices: () => readyDevices.size
  }
}

export type DeviceGateway = ReturnType<typeof createDeviceGateway>
