// Device authentication through a real Shepherd (contract §2): every refusal reason with its
// CONNACK return code and its log line, over MQTT/WebSocket and MQTT/TCP; the accepted credential
// forms and just-in-time registration; replay with a malleated signature; PostgreSQL as well.
import t, { type Test } from 'tap'
import { createHash, createPrivateKey, createPublicKey, sign, verify, X509Certificate } from 'node:crypto'
import { createFleetCa } from '../../src/certs/pki.js'
import { devicePassword } from '../../src/device-client/device-client.js'
import { makeIdentity } from '../../src/device-client/fleet.js'
import { startTestServer, eventually, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { malleate } from '../helpers/signatures.js'
import { asDevice, connackCode, connectPacket, credentialOf, expectRefusal as expectLoggedRefusal, nowSeconds, type RawConnect } from '../helpers/connect.js'


// ---- helpers ----

function transportsOf (ts: TestServer): Array<[string, string]> {
  return [['WebSocket', ts.wsUrl], ['TCP', ts.mqttUrl]]
}

/** The shared check (CONNACK code; one refusal logged, with reason and serial), and the line names the client's address. */
async function expectRefusal (...args: Parameters<typeof expectLoggedRefusal>): Promise<void> {
  const [t, ts] = args
  const mark = ts.logs.length
  await expectLoggedRefusal(...args)
  const line = ts.logs.slice(mark).find(line => line.msg === 'device connection refused')
  t.match(line?.remote, /^(127\.0\.0\.1|::1|::ffff:127\.0\.0\.1)$/, 'logged with the client\'s address (remote)')
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
