// MQTT CONNECT probes for authentication tests: connect with exact CONNECT fields (mqtt.js) or
// raw bytes (what mqtt.js refuses to send), answer the CONNACK return code, and check the
// refusal's log line.
import net from 'node:net'
import mqtt, { type MqttClient } from 'mqtt'
import WebSocket from 'ws'
import type { Test } from 'tap'
import { devicePassword, type DeviceIdentity } from '../../src/device-client/device-client.js'
import { eventually, type TestServer } from './server.js'

export interface RawConnect {
  clientId: string
  username?: string
  password?: string | Buffer
}

/** What the server answered a CONNECT with: its CONNACK return code, or 'closed' without one. */
export type Outcome = number | 'closed' | `error: ${string}`

/** Connects with exactly these CONNECT fields (mqtt.js, MQTT 3.1.1, no reconnect); answers the return code. */
export async function connackCode (url: string, connect: RawConnect): Promise<Outcome> {
  const client = mqtt.connect(url, {
    clientId: connect.clientId,
    username: connect.username,
    password: connect.password as string | undefined, // mqtt.js sends a Buffer password as is
    protocolVersion: 4,
    clean: true,
    reconnectPeriod: 0,
    connectTimeout: 5000
  })
  return await new Promise<Outcome>((resolve) => {
    client.once('connect', () => { resolve(0); client.end(true) })
    client.once('error', (error: Error & { code?: unknown }) => {
      // mqtt 5.x: a refused CONNACK is an ErrorWithReasonCode whose `code` is the return code
      client.end(true)
      resolve(typeof error.code === 'number' ? error.code : `error: ${error.message}`)
    })
    client.once('close', () => { resolve('closed') })
  })
}

function mqttString (value: string | Buffer): Buffer {
  const bytes = typeof value === 'string' ? Buffer.from(value, 'utf8') : value
  const length = Buffer.alloc(2)
  length.writeUInt16BE(bytes.length)
  return Buffer.concat([length, bytes])
}

function remainingLength (n: number): Buffer {
  const bytes: number[] = []
  do {
    let byte = n % 128
    n = Math.floor(n / 128)
    if (n > 0) byte |= 0x80
    bytes.push(byte)
  } while (n > 0)
  return Buffer.from(bytes)
}

/** A CONNECT packet built by hand: lets a test send what mqtt.js refuses to (a password without a username). */
export function connectPacket (connect: RawConnect): Buffer {
  const flags = 0x02 | (connect.username === undefined ? 0 : 0x80) | (connect.password === undefined ? 0 : 0x40)
  const body = Buffer.concat([
    mqttString('MQTT'), Buffer.from([4, flags, 0, 30]),
    mqttString(connect.clientId),
    connect.username === undefined ? Buffer.alloc(0) : mqttString(connect.username),
    connect.password === undefined ? Buffer.alloc(0) : mqttString(connect.password)
  ])
  return Buffer.concat([Buffer.from([0x10]), remainingLength(body.length), body])
}

/** Sends raw bytes over TCP or WebSocket and answers the CONNACK return code (or 'closed'). */
export async function rawConnackCode (url: string, bytes: Buffer): Promise<Outcome> {
  return await new Promise<Outcome>((resolve) => {
    let received = Buffer.alloc(0)
    const onData = (chunk: Buffer): void => {
      received = Buffer.concat([received, chunk])
      if (received.length >= 4) {
        resolve(received[0] === 0x20 && received[1] === 0x02 ? received[3]! : `error: unexpected bytes ${received.toString('hex')}`)
        close()
      }
    }
    let close: () => void
    if (url.startsWith('ws')) {
      const socket = new WebSocket(url, 'mqtt')
      close = () => { socket.terminate() }
      socket.on('open', () => { socket.send(bytes) })
      socket.on('message', (data: Buffer) => { onData(data) })
      socket.on('error', () => {})
      socket.on('close', () => { resolve('closed') })
    } else {
      const { hostname, port } = new URL(url)
      const socket = net.connect(Number(port), hostname, () => { socket.write(bytes) })
      close = () => { socket.destroy() }
      socket.on('data', onData)
      socket.on('error', () => {})
      socket.on('close', () => { resolve('closed') })
    }
  })
}

export type Credential = Record<string, unknown>
export const nowSeconds = (): number => Math.floor(Date.now() / 1000)
export const credentialOf = (identity: DeviceIdentity, options: Parameters<typeof devicePassword>[1] = {}): Credential =>
  JSON.parse(devicePassword(identity, options)) as Credential
export const asDevice = (serial: string, credential: Credential | string | Buffer): RawConnect =>
  ({ clientId: serial, username: serial, password: typeof credential === 'string' || Buffer.isBuffer(credential) ? credential : JSON.stringify(credential) })

const REFUSED = 'device connection refused'

/** Waits for the one refusal logged since `mark` and checks its reason and serial. */
export async function assertRefusalLogged (t: Test, ts: TestServer, mark: number, reason: string, serial: string | undefined): Promise<void> {
  const lines = await eventually(() => {
    const found = ts.logs.slice(mark).filter(line => line.msg === REFUSED)
    return found.length > 0 ? found : undefined
  }, 2000, `a '${REFUSED}' log line (${reason})`).catch(() => [] as Array<Record<string, unknown>>)
  t.equal(lines.length, 1, 'one refusal logged')
  const line = lines[0] ?? {}
  t.equal(line.reason, reason, `logged reason ${reason}`)
  if (serial === undefined) t.notOk('serial' in line, 'no serial logged')
  else t.equal(line.serial, serial, 'logged serial')
  t.equal(line.level, 40, 'logged as a warning')
}

/** One CONNECT, expected to be refused with `code` and logged with `reason` and `loggedSerial`. */
export async function expectRefusal (t: Test, ts: TestServer, url: string, connect: RawConnect | Buffer, code: number, reason: string, loggedSerial: string | undefined): Promise<void> {
  const mark = ts.logs.length
  const outcome = Buffer.isBuffer(connect) ? await rawConnackCode(url, connect) : await connackCode(url, connect)
  t.equal(outcome, code, `CONNACK return code ${code} (${reason})`)
  await assertRefusalLogged(t, ts, mark, reason, loggedSerial)
}


/** The SUBACK's per-filter answers (128 for a refused filter: mqtt.js rejects then, with the packet). */
export async function subackOf (client: MqttClient, filters: Record<string, { qos: 0 | 1 }>): Promise<number[]> {
  try {
    return (await client.subscribeAsync(filters)).map(grant => grant.qos)
  } catch (error) {
    const packet = (error as { packet?: { granted?: number[] } }).packet
    if (packet?.granted === undefined) throw error
    return packet.granted
  }
}
