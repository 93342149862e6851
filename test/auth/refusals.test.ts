// Device authentication through a real Shepherd (contract §2): every refusal reason with its
// CONNACK return code and its log line, over MQTT/WebSocket and MQTT/TCP; the accepted credential
// forms and just-in-time registration; replay with a malleated signature; PostgreSQL as well.
import t, { type Test } from 'tap'
import net from 'node:net'
import { createHash, createPrivateKey, createPublicKey, sign, verify, X509Certificate } from 'node:crypto'
import mqtt from 'mqtt'
import WebSocket from 'ws'
import { createFleetCa } from '../../src/certs/pki.js'
import { devicePassword, type DeviceIdentity } from '../../src/device-client/device-client.js'
import { makeIdentity } from '../../src/device-client/fleet.js'
import { startTestServer, eventually, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

const P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551n

// ---- helpers ----

interface RawConnect {
  clientId: string
  username?: string
  password?: string | Buffer
}

/** What the server answered a CONNECT with: its CONNACK return code, or 'closed' without one. */
type Outcome = number | 'closed' | `error: ${string}`

/** Connects with exactly these CONNECT fields (mqtt.js, MQTT 3.1.1, no reconnect); answers the return code. */
async function connackCode (url: string, connect: RawConnect): Promise<Outcome> {
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
function connectPacket (connect: RawConnect): Buffer {
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
async function rawConnackCode (url: string, bytes: Buffer): Promise<Outcome> {
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

/** (r, s) → (r, n − s): another valid ECDSA signature of the same message, DER or P1363 as given. */
function malleate (signature: Buffer): Buffer {
  const bytes = (value: bigint, width?: number): Buffer => {
    let hex = value.toString(16)
    hex = width === undefined ? (hex.length % 2 === 1 ? `0${hex}` : hex) : hex.padStart(width * 2, '0')
    return Buffer.from(hex, 'hex')
  }
  if (signature.length === 64) {
    return Buffer.concat([signature.subarray(0, 32), bytes(P256_N - BigInt(`0x${signature.subarray(32).toString('hex')}`), 32)])
  }
  const rLength = signature[3]!
  const sAt = 4 + rLength
  const r = BigInt(`0x${signature.subarray(4, sAt).toString('hex')}`)
  const s = BigInt(`0x${signature.subarray(sAt + 2, sAt + 2 + signature[sAt + 1]!).toString('hex')}`)
  const integer = (value: bigint): Buffer => {
    let b = bytes(value)
    if ((b[0]! & 0x80) !== 0) b = Buffer.concat([Buffer.from([0]), b])
    return Buffer.concat([Buffer.from([0x02, b.length]), b])
  }
  const body = Buffer.concat([integer(r), integer(P256_N - s)])
  return Buffer.concat([Buffer.from([0x30, body.length]), body])
}

type Credential = Record<string, unknown>
const nowSeconds = (): number => Math.floor(Date.now() / 1000)
const credentialOf = (identity: DeviceIdentity, options: Parameters<typeof devicePassword>[1] = {}): Credential =>
  JSON.parse(devicePassword(identity, options)) as Credential
const asDevice = (serial: string, credential: Credential | string): RawConnect =>
  ({ clientId: serial, username: serial, password: typeof credential === 'string' ? credential : JSON.stringify(credential) })

function transportsOf (ts: TestServer): Array<[string, string]> {
  return [['WebSocket', ts.wsUrl], ['TCP', ts.mqttUrl]]
}

const REFUSED = 'device connection refused'

/** Waits for the one refusal logged since `mark` and checks its reason and serial. */
async function assertRefusalLogged (t: Test, ts: TestServer, mark: number, reason: string, serial: string | undefined): Promise<void> {
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
async function expectRefusal (t: Test, ts: TestServer, url: string, connect: RawConnect | Buffer, code: number, reason: string, loggedSerial: string | undefined): Promise<void> {
  const mark = ts.logs.length
  const outcome = Buffer.isBuffer(connect) ? await rawConnackCode(url, connect) : await connackCode(url, connect)
  t.equal(outcome, code, `CONNACK return code ${code} (${reason})`)
  await assertRefusalLogged(t, ts, mark, reason, loggedSerial)
}

async function expectAccepted (t: Test, url: string, connect: RawConnect, what: string): Promise<void> {
  t.equal(await connackCode(url, connect), 0, `${what}: accepted`)
}

// ---- the server for this file ----

const ts = await startTestServer(t)

interface RefusalCase {
  name: string
  code: number
  reason: string
  /** Builds the CONNECT for a fresh serial; answers it and the serial expected in the log. */
  build (serial: string): Promise<{ connect: RawConnect | Buffer, logged: string | undefined }>
}

const DAY_MS = 86_400_000
const strangerCa = await createFleetCa()

const refusalCases: RefusalCase[] = [
  {
    name: 'serial malformed (a "/" in it)',
    code: 2,
    reason: 'bad_serial',
    async build (serial) {
      const bad = `${serial}/x`
      const identity = await ts.pki.device(serial)
      return { connect: asDevice(bad, credentialOf({ ...identity, serial: bad })), logged: bad }
    }
  },
  {
    name: 'serial malformed (65 characters)',
    code: 2,
    reason: 'bad_serial',
    async build (serial) {
      const bad = `${serial}-`.padEnd(65, 'x')
      const identity = await ts.pki.device(serial)
      return { connect: asDevice(bad, credentialOf({ ...identity, serial: bad })), logged: bad }
    }
  },
  {
    name: 'serial empty (username "")',
    code: 2,
    reason: 'bad_serial',
    async build (serial) {
      const identity = await ts.pki.device(serial)
      return { connect: { clientId: serial, username: '', password: devicePassword(identity) }, logged: '' }
    }
  },
  {
    name: 'serial missing (a CONNECT with a password and no username)',
    code: 2,
    reason: 'bad_serial',
    async build (serial) {
      const identity = await ts.pki.device(serial)
      return { connect: connectPacket({ clientId: serial, password: devicePassword(identity) }), logged: undefined }
    }
  },
  {
    name: 'serial ≠ client id',
    code: 2,
    reason: 'client_id_mismatch',
    async build (serial) {
      const identity = await ts.pki.device(serial)
      return { connect: { clientId: `${serial}-other`, username: serial, password: devicePassword(identity) }, logged: serial }
    }
  },
  {
    name: 'serial ≠ an empty client id',
    code: 2,
    reason: 'client_id_mismatch',
    async build (serial) {
      const identity = await ts.pki.device(serial)
      return { connect: { clientId: '', username: serial, password: devicePassword(identity) }, logged: serial }
    }
  },
  {
    name: 'timestamp missing',
    code: 4,
    reason: 'bad_timestamp',
    async build (serial) {
      const credential = credentialOf(await ts.pki.device(serial))
      delete credential.timestamp
      return { connect: asDevice(serial, credential), logged: serial }
    }
  },
  ...[1.5, 'abc', '1.5', null].map((timestamp): RefusalCase => ({
    name: `timestamp ${JSON.stringify(timestamp)}`,
    code: 4,
    reason: 'bad_timestamp',
    async build (serial) {
      return { connect: asDevice(serial, { ...credentialOf(await ts.pki.device(serial)), timestamp }), logged: serial }
    }
  })),
  {
    name: 'signature not base64',
    code: 4,
    reason: 'bad_encoding',
    async build (serial) {
      return { connect: asDevice(serial, { ...credentialOf(await ts.pki.device(serial)), signature: 'not*base64!' }), logged: serial }
    }
  },
  {
    name: 'cert not base64',
    code: 4,
    reason: 'bad_encoding',
    async build (serial) {
      return { connect: asDevice(serial, { ...credentialOf(await ts.pki.device(serial)), cert: '-----BEGIN CERTIFICATE-----' }), logged: serial }
    }
  },
  {
    name: 'cert does not parse as X.509',
    code: 4,
    reason: 'bad_certificate',
    async build (serial) {
      const identity = await ts.pki.device(serial)
      return { connect: asDevice(serial, { ...credentialOf(identity), cert: identity.certDer.subarray(0, identity.certDer.length - 10).toString('base64') }), logged: serial }
    }
  },
  {
    name: 'cert expired',
    code: 4,
    reason: 'certificate_expired',
    async build (serial) {
      const identity = await ts.pki.device(serial, { notBefore: new Date(Date.now() - 10 * DAY_MS), days: 1 })
      return { connect: asDevice(serial, credentialOf(identity)), logged: serial }
    }
  },
  {
    name: 'cert not yet valid',
    code: 4,
    reason: 'certificate_not_yet_valid',
    async build (serial) {
      const identity = await ts.pki.device(serial, { notBefore: new Date(Date.now() + DAY_MS), days: 30 })
      return { connect: asDevice(serial, credentialOf(identity)), logged: serial }
    }
  },
  {
    name: 'cert signed by another CA',
    code: 4,
    reason: 'untrusted_certificate',
    async build (serial) {
      const identity = await makeIdentity({ certificate: strangerCa.certificate, privateKey: strangerCa.privateKey }, serial)
      return { connect: asDevice(serial, credentialOf(identity)), logged: serial }
    }
  },
  {
    name: 'cert via an intermediate, chain left out',
    code: 4,
    reason: 'untrusted_certificate',
    async build (serial) {
      const identity = await ts.pki.deviceViaIntermediate(serial)
      return { connect: asDevice(serial, credentialOf({ ...identity, chain: undefined })), logged: serial }
    }
  },
  {
    name: 'CN ≠ serial',
    code: 4,
    reason: 'cn_mismatch',
    async build (serial) {
      const other = await ts.pki.device(`${serial}-cn`)
      // a genuine device's cert and key, used to sign a credential for another serial
      return { connect: asDevice(serial, credentialOf({ ...other, serial })), logged: serial }
    }
  },
  {
    name: 'timestamp 120 s in the past',
    code: 4,
    reason: 'timestamp_out_of_tolerance',
    async build (serial) {
      return { connect: asDevice(serial, credentialOf(await ts.pki.device(serial), { timestamp: nowSeconds() - 120 })), logged: serial }
    }
  },
  {
    name: 'timestamp 120 s in the future',
    code: 4,
    reason: 'timestamp_out_of_tolerance',
    async build (serial) {
      return { connect: asDevice(serial, credentialOf(await ts.pki.device(serial), { timestamp: nowSeconds() + 120 })), logged: serial }
    }
  },
  {
    name: 'signature by another key',
    code: 4,
    reason: 'bad_signature',
    async build (serial) {
      const identity = await ts.pki.device(serial)
      const stranger = await ts.pki.device(`${serial}-key`)
      return { connect: asDevice(serial, credentialOf({ ...identity, privateKey: stranger.privateKey })), logged: serial }
    }
  },
  {
    name: 'signature over another message',
    code: 4,
    reason: 'bad_signature',
    async build (serial) {
      const identity = await ts.pki.device(serial)
      const now = nowSeconds()
      return { connect: asDevice(serial, { ...credentialOf(identity, { timestamp: now - 1 }), timestamp: now }), logged: serial }
    }
  }
]

t.test('every refusal of contract §2, with its CONNACK return code and its log line', async (t) => {
  for (const [transport, url] of transportsOf(ts)) {
    for (const refusal of refusalCases) {
      await t.test(`${transport}: ${refusal.name} → ${refusal.code} (${refusal.reason})`, async (t) => {
        const { connect, logged } = await refusal.build(uniqueSerial())
        await expectRefusal(t, ts, url, connect, refusal.code, refusal.reason, logged)
      })
    }
  }
})

t.test('the refusal log line carries no credential', async (t) => {
  const serial = uniqueSerial()
  const identity = await ts.pki.device(serial)
  const password = devicePassword({ ...identity, privateKey: (await ts.pki.device(`${serial}-x`)).privateKey })
  await expectRefusal(t, ts, ts.mqttUrl, asDevice(serial, password), 4, 'bad_signature', serial)
  const signature = (JSON.parse(password) as { signature: string }).signature
  t.notOk(JSON.stringify(ts.logs).includes(signature), 'the signature is not in the log')
})

async function acceptedCases (t: Test, ts: TestServer): Promise<void> {
  for (const [transport, url] of transportsOf(ts)) {
    await t.test(`${transport}: accepted credentials`, async (t) => {
      const der = await ts.pki.device(uniqueSerial())
      const derCredential = credentialOf(der)
      t.not(Buffer.from(derCredential.signature as string, 'base64').length, 64, 'a DER signature')
      await expectAccepted(t, url, asDevice(der.serial, derCredential), 'DER signature, integer timestamp')

      const p1363 = await ts.pki.device(uniqueSerial())
      const p1363Credential = credentialOf(p1363, { signatureFormat: 'p1363' })
      t.equal(Buffer.from(p1363Credential.signature as string, 'base64').length, 64, 'a raw r||s signature')
      await expectAccepted(t, url, asDevice(p1363.serial, p1363Credential), 'P1363 signature')

      const stringTs = await ts.pki.device(uniqueSerial())
      const stringCredential = credentialOf(stringTs, { timestamp: String(nowSeconds()) })
      t.type(stringCredential.timestamp, 'string')
      await expectAccepted(t, url, asDevice(stringTs.serial, stringCredential), 'decimal-string timestamp')

      const chained = await ts.pki.deviceViaIntermediate(uniqueSerial())
      const chainedCredential = credentialOf(chained)
      t.equal((chainedCredential.chain as unknown[]).length, 1, 'one intermediate in the chain')
      await expectAccepted(t, url, asDevice(chained.serial, chainedCredential), 'cert via an intermediate, with chain')

      // just-in-time registration: fingerprint (SHA-256 of the DER, lowercase hex) and notAfter
      for (const identity of [der, p1363, stringTs, chained]) {
        const row = await eventually(async () => await ts.server.db.knex('devices').where({ serial: identity.serial }).first(), 3000, `row of ${identity.serial}`)
          .catch(() => undefined) as { cert_fingerprint: string, cert_not_after: Date | string, revoked: boolean } | undefined
        t.ok(row, `${identity.serial} registered`)
        t.equal(row?.cert_fingerprint, createHash('sha256').update(identity.certDer).digest('hex'), 'cert_fingerprint')
        t.match(row?.cert_fingerprint, /^[0-9a-f]{64}$/, 'lowercase hex')
        t.equal(row === undefined ? undefined : new Date(row.cert_not_after).getTime(), Date.parse(new X509Certificate(identity.certDer).validTo), 'cert_not_after')
        t.equal(row?.revoked, false)
      }
    })
  }
}

async function revokedCase (t: Test, ts: TestServer): Promise<void> {
  for (const [transport, url] of transportsOf(ts)) {
    await t.test(`${transport}: a revoked device → 5 (revoked)`, async (t) => {
      const identity = await ts.pki.device(uniqueSerial())
      await expectAccepted(t, url, asDevice(identity.serial, credentialOf(identity)), 'first connect (registers the device)')
      await ts.server.settled()
      t.same(await ts.server.revokeDevice(identity.serial), { found: true }, 'revoked')
      // a fresh timestamp, so that replay protection is not what refuses it
      await expectRefusal(t, ts, url, asDevice(identity.serial, credentialOf(identity, { timestamp: nowSeconds() + 1 })), 5, 'revoked', identity.serial)
      const row = await ts.server.db.knex('devices').where({ serial: identity.serial }).first() as { revoked: boolean } | undefined
      t.equal(row?.revoked, true, 'stored as revoked')
    })
  }
}

t.test('accepted: DER and P1363 signatures, string timestamp, intermediate chain; just-in-time registration', async (t) => {
  await acceptedCases(t, ts)
})

t.test('revoked', async (t) => {
  await revokedCase(t, ts)
})

t.test('replay of an accepted (serial, timestamp), including a malleated signature → 4 (replayed)', async (t) => {
  for (const [transport, url] of transportsOf(ts)) {
    for (const signatureFormat of ['der', 'p1363'] as const) {
      await t.test(`${transport}, ${signatureFormat}`, async (t) => {
        const identity = await ts.pki.device(uniqueSerial())
        const serial = identity.serial
        const timestamp = nowSeconds()
        const accepted = credentialOf(identity, { timestamp, signatureFormat })
        await expectAccepted(t, url, asDevice(serial, accepted), 'first connect')

        await expectRefusal(t, ts, url, asDevice(serial, accepted), 4, 'replayed', serial)

        const signature = Buffer.from(accepted.signature as string, 'base64')
        const malleated = malleate(signature)
        t.not(malleated.toString('base64'), accepted.signature, 'the malleated signature differs from the accepted one')
        t.ok(verify('sha256', Buffer.from(`${serial}:${timestamp}`),
          { key: createPublicKey(createPrivateKey(identity.privateKey as string)), dsaEncoding: signatureFormat === 'der' ? 'der' : 'ieee-p1363' }, malleated),
        '(r, n − s) verifies')
        await expectRefusal(t, ts, url, asDevice(serial, { ...accepted, signature: malleated.toString('base64') }), 4, 'replayed', serial)

        // a malleated signature on a pair not used before would be accepted: the refusal above is the replay check
        const fresh = credentialOf(identity, { timestamp: timestamp + 1, signatureFormat })
        const freshMalleated = malleate(Buffer.from(fresh.signature as string, 'base64')).toString('base64')
        await expectAccepted(t, url, asDevice(serial, { ...fresh, signature: freshMalleated }), 'a new timestamp (with a malleated signature)')
        await expectAccepted(t, url, asDevice(serial, credentialOf(identity, { timestamp: timestamp + 2, signatureFormat })), 'another new timestamp')
      })
    }
  }
})

t.test('a refused attempt does not use up its timestamp', async (t) => {
  const identity = await ts.pki.device(uniqueSerial())
  const timestamp = nowSeconds()
  const key = createPrivateKey((await ts.pki.device(uniqueSerial())).privateKey as string)
  const forged = { ...credentialOf(identity, { timestamp }), signature: sign('sha256', Buffer.from(`${identity.serial}:${timestamp}`), key).toString('base64') }
  await expectRefusal(t, ts, ts.mqttUrl, asDevice(identity.serial, forged), 4, 'bad_signature', identity.serial)
  await expectAccepted(t, ts.wsUrl, asDevice(identity.serial, credentialOf(identity, { timestamp })), 'the genuine device with the same timestamp')
})

t.test('PostgreSQL: accepted device and revoked device', async (t) => {
  const pgServer = await startTestServer(t, { database: 'postgres' })
  t.equal(pgServer.server.db.kind, 'postgres')
  await acceptedCases(t, pgServer)
  await revokedCase(t, pgServer)
})
