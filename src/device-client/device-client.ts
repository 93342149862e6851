// A reference device: connects with a signed credential (contract §2), sets the recommended will,
// reports info and metrics, answers commands and performs firmware updates. Used by `shepherd
// simulate`, tests and benchmarks, and meant to be read by people writing device firmware.
import { createPrivateKey, sign, type KeyObject } from 'node:crypto'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { deviceTopic } from '../topics.js'
import { createFirmwareUpdater, type FirmwareUpdater } from './firmware-updater.js'

export interface DeviceIdentity {
  serial: string
  /** The device certificate, DER. */
  certDer: Buffer
  /** PEM (PKCS#8 or SEC1) or a KeyObject. */
  privateKey: string | KeyObject
  /** Intermediate CA certificates (DER), leaf-nearest first. */
  chain?: Buffer[]
}

export interface CredentialOptions {
  /** Unix seconds; defaults to now. */
  timestamp?: number | string
  /** `der` (OpenSSL, Erlang) or `p1363` (raw r||s, WebCrypto, secure elements). */
  signatureFormat?: 'der' | 'p1363'
}

/** The CONNECT password of contract §2: timestamp, signature of "serial:timestamp", cert, chain. */
export function devicePassword (identity: DeviceIdentity, options: CredentialOptions = {}): string {
  const timestamp = options.timestamp ?? Math.floor(Date.now() / 1000)
  const key = typeof identity.privateKey === 'string' ? createPrivateKey(identity.privateKey) : identity.privateKey
  const signature = sign('sha256', Buffer.from(`${identity.serial}:${timestamp}`), {
    key, dsaEncoding: options.signatureFormat === 'p1363' ? 'ieee-p1363' : 'der'
  })
  return JSON.stringify({
    timestamp,
    signature: signature.toString('base64'),
    cert: identity.certDer.toString('base64'),
    ...(identity.chain === undefined ? {} : { chain: identity.chain.map(der => der.toString('base64')) })
  })
}

export interface DeviceClientOptions extends CredentialOptions {
  /** ws://host:4000/mqtt, wss://…, mqtt://host:1883 or mqtts://… */
  url: string
  identity: DeviceIdentity
  /** Reconnect automatically (with a freshly signed credential) after this many ms; 0 = never. */
  reconnectPeriodMs?: number
  keepaliveSeconds?: number
  connectTimeoutMs?: number
  /** Firmware info published (retained) on connect; an update changes its firmware_version. */
  info?: Record<string, unknown>
  /** Answer commands (ping, identify, reboot, update) and take firmware offers. Default true. */
  answerCommands?: boolean
  /** Extra mqtt.js options (tests: TLS trust, for example). */
  mqttOptions?: Partial<IClientOptions>
  /** Pause between a reboot (command or update) and the reconnect. */
  rebootDelayMs?: number
  /**
   * What the device does with firmware offers (a test hook). 'apply' (default): download, verify,
   * report applying, reboot and come back with the offered firmware_version, then report complete.
   * 'revert': the same, but it comes back with its old firmware_version (an update that reverted).
   * 'fail': report failed ("simulated failure") right after the download. 'ignore': do not act on
   * offers at all — no reply to the update command, no update_status (server timeouts).
   */
  updateBehaviour?: 'apply' | 'revert' | 'ignore' | 'fail'
}

export interface CommandMessage { id: string, command: string, payload?: Record<string, unknown> }

export interface DeviceClient {
  readonly serial: string
  readonly mqtt: MqttClient
  /** The last error after the device connected (for example a refused reconnect). */
  lastError?: Error
  publishInfo (info: Record<string, unknown>): Promise<void>
  publishMetrics (points: Array<{ name: string, value: number, unit?: string, recorded_at?: number | string }>, qos?: 0 | 1): Promise<void>
  close (): Promise<void>
}

/** The recommended will (contract §2); the server publishes its own status, with the reason. */
export function deviceWill (serial: string): NonNullable<IClientOptions['will']> {
  return { topic: deviceTopic(serial, 'status'), payload: Buffer.from(JSON.stringify({ status: 'offline', reason: 'lost' })), qos: 1, retain: true }
}

/** Connects a device; resolves once the CONNACK accepted it, rejects with the refusal otherwise. */
export async function connectDevice (options: DeviceClientOptions): Promise<DeviceClient> {
  const { identity } = options
  const serial = identity.serial
  let lastTimestamp = Number(options.timestamp ?? Math.floor(Date.now() / 1000))
  const client = mqtt.connect(options.url, {
    clientId: serial,
    username: serial,
    password: devicePassword(identity, { ...options, timestamp: options.timestamp ?? lastTimestamp }),
    protocolVersion: 4,
    clean: true,
    keepalive: options.keepaliveSeconds ?? 30,
    reconnectPeriod: options.reconnectPeriodMs ?? 0,
    connectTimeout: options.connectTimeoutMs ?? 10_000,
    will: deviceWill(serial),
    ...options.mqttOptions
  })
  // every (re)connect signs a new timestamp: the server refuses a replayed (serial, timestamp)
  const refreshCredential = (): void => {
    // the server accepts a (serial, timestamp) pair once: a reconnect within the same second
    // signs the next second (well inside the tolerance)
    lastTimestamp = Math.max(Math.floor(Date.now() / 1000), lastTimestamp + 1)
    client.options.password = devicePassword(identity, { signatureFormat: options.signatureFormat, timestamp: lastTimestamp })
  }
  client.on('reconnect', refreshCredential)

  let closed = false
  // simulate a reboot: drop the connection, come back after a pause with a new credential
  const simulateReboot = (): void => {
    client.end(true, {}, () => {
      setTimeout(() => { if (!closed) { refreshCredential(); client.reconnect() } }, options.rebootDelayMs ?? 1000).unref()
    })
  }

  const publish = async (topic: string, payload: string, qos: 0 | 1, retain: boolean): Promise<void> => {
    await client.publishAsync(topic, payload, { qos, retain })
  }
  let info = options.info
  const updater = options.answerCommands === false || options.updateBehaviour === 'ignore' ? undefined : createFirmwareUpdater({
    behaviour: options.updateBehaviour,
    report: (status) => publish(deviceTopic(serial, 'update_status'), JSON.stringify(status), 1, false),
    reboot: (version) => {
      if (version !== undefined) info = { ...info, firmware_version: version } // published on the reconnect
      simulateReboot()
    }
  })
  const device: DeviceClient = {
    serial,
    mqtt: client,
    publishInfo: (info) => publish(deviceTopic(serial, 'info'), JSON.stringify(info), 1, true),
    publishMetrics: (points, qos = 1) => publish(deviceTopic(serial, 'metrics'), JSON.stringify({
      metrics: points.map(point => ({ recorded_at: Math.floor(Date.now() / 1000), ...point }))
    }), qos, false),
    close: async () => {
      closed = true
      updater?.close()
      await client.endAsync()
    }
  }

  client.on('connect', () => {
    if (info !== undefined) void device.publishInfo(info).catch(() => {})
    updater?.connected() // after the info: the server completes an update on the new firmware_version
  })
  if (options.answerCommands !== false) {
    client.on('connect', () => {
      client.subscribe([deviceTopic(serial, 'commands'), deviceTopic(serial, 'firmware'), deviceTopic(serial, 'errors')], { qos: 1 })
    })
    // delivery is at least once: a command sent again (after a reconnect) is recognised by its id
    const answered = new Set<string>()
    client.on('message', (topic, payload) => {
      if (topic === deviceTopic(serial, 'firmware')) {
        if (payload.length === 0) return // the offer was cleared
        try {
          updater?.offer(JSON.parse(payload.toString('utf8')))
        } catch {}
        return
      }
      if (topic !== deviceTopic(serial, 'commands')) return
      let command: CommandMessage
      try {
        command = JSON.parse(payload.toString('utf8')) as CommandMessage
      } catch { return }
      if (answered.has(command.id)) return
      answered.add(command.id)
      if (answered.size > 1000) answered.delete(answered.values().next().value!)
      answerCommand(client, serial, command, simulateReboot, updater)
    })
  }

  await new Promise<void>((resolve, reject) => {
    const settle = (error?: Error): void => {
      client.off('connect', onConnect).off('error', onError).off('close', onClose)
      if (error === undefined) {
        // later errors (a refused reconnect, a reset socket) end up in lastError, not as a crash
        client.on('error', (later: Error) => { device.lastError = later })
        return resolve()
      }
      client.end(true)
      reject(error)
    }
    const onConnect = (): void => { settle() }
    const onError = (error: Error): void => { settle(error) }
    const onClose = (): void => { settle(new Error('connection closed before the server accepted the CONNECT')) }
    client.on('connect', onConnect).on('error', onError).on('close', onClose)
  })
  return device
}

function answerCommand (client: MqttClient, serial: string, command: CommandMessage, reboot: () => void, updater: FirmwareUpdater | undefined): void {
  const reply = (body: Record<string, unknown>): Promise<unknown> =>
    client.publishAsync(deviceTopic(serial, 'replies'), JSON.stringify({ id: command.id, ...body }), { qos: 1 })
  switch (command.command) {
    case 'ping':
      void reply({ status: 'ok', result: { echo: command.payload?.echo ?? null } }).catch(() => {})
      break
    case 'identify':
      void reply({ status: 'ok', result: { identified: true } }).catch(() => {})
      break
    case 'reboot':
      void reply({ status: 'ok', result: { rebooting: true } }).then(reboot, () => {})
      break
    case 'update': {
      if (updater === undefined) break // updateBehaviour 'ignore'
      const accepted = updater.offer(command.payload)
      void reply(accepted.ok ? { status: 'ok', result: { update_id: accepted.updateId } } : { status: 'error', error: accepted.error }).catch(() => {})
      break
    }
    default:
      void reply({ status: 'error', error: `unsupported command ${JSON.stringify(command.command)}` }).catch(() => {})
  }
}
