// Unit tests of the device authenticator (contract §2): a real FleetTrust over certificates made
// with src/certs/pki.ts, the memory replay guard and an in-test DeviceAdmission, on a controlled
// clock. Each refusal reason, the order of the ten checks, and the accepted credential forms.
import t, { type Test } from 'tap'
import { createHash, createPrivateKey, createPublicKey, sign, verify, webcrypto, X509Certificate } from 'node:crypto'
import 'reflect-metadata' // before @peculiar/x509
import * as x509 from '@peculiar/x509'
import {
  createDeviceAuthenticator, parseDeviceCredential, MAX_PASSWORD_BYTES, REFUSAL_RETURN_CODES,
  type DeviceAdmission, type Verdict
} from '../../src/auth/device-authenticator.js'
import { createMemoryReplayGuard } from '../../src/auth/replay-guard.js'
import { createFleetTrust } from '../../src/certs/trust.js'
import { createFleetCa, issueCertificate } from '../../src/certs/pki.js'
import { devicePassword, type DeviceIdentity } from '../../src/device-client/device-client.js'
import { makeIdentity } from '../../src/device-client/fleet.js'
import { createTestPki, uniqueSerial } from '../helpers/pki.js'
import { malleate } from '../helpers/signatures.js'

type Credential = Record<string, unknown>

function credentialOf (identity: DeviceIdentity, options: Parameters<typeof devicePassword>[1] = {}): Credential {
  return JSON.parse(devicePassword(identity, options)) as Credential
}

const pki = await createTestPki()
const trust = createFleetTrust(pki.caPem)
const T0 = Math.floor(Date.now() / 1000) // a whole second: the clock below moves in exact ms steps
let clockMs = T0 * 1000

interface Admitted { fingerprint: string, notAfter: Date }

function setup (options: { toleranceSeconds?: number, admission?: DeviceAdmission } = {}) {
  const admitted = new Map<string, Admitted>()
  const revoked = new Set<string>()
  const admission: DeviceAdmission = options.admission ?? {
    async admit (serial, certificate) {
      if (!admitted.has(serial)) admitted.set(serial, { fingerprint: certificate.fingerprint, notAfter: certificate.notAfter })
      return { revoked: revoked.has(serial) }
    }
  }
  const authenticator = createDeviceAuthenticator({
    trust,
    replayGuard: createMemoryReplayGuard(() => clockMs),
    admission,
    timestampToleranceSeconds: options.toleranceSeconds ?? 60,
    now: () => clockMs
  })
  async function connect (serial: string | undefined, password: Buffer | string | Credential | undefined, clientId = serial ?? ''): Promise<Verdict> {
    const bytes = password === undefined || Buffer.isBuffer(password)
      ? password
      : Buffer.from(typeof password === 'string' ? password : JSON.stringify(password), 'utf8')
    return await authenticator.authenticate({ clientId, username: serial, password: bytes })
  }
  return { authenticator, connect, admitted, revoked }
}

function refusedWith (t: Test, verdict: Verdict, reason: keyof typeof REFUSAL_RETURN_CODES, serial: string | undefined): void {
  if (verdict.ok) {
    t.fail(`expected a refusal (${reason}), got an acceptance of ${verdict.serial}`)
    return
  }
  t.equal(verdict.reason, reason, `refused as ${reason} (${verdict.detail})`)
  t.equal(verdict.serial, serial, 'the refusal carries the serial')
  t.type(verdict.detail, 'string')
}

t.beforeEach(() => { clockMs = T0 * 1000 })

t.test('the ten checks run in the contract order and map to the contract return codes', async (t) => {
  const { authenticator } = setup()
  t.same(authenticator.steps, ['serial', 'timestamp', 'encoding', 'certificate', 'chain', 'common name', 'timestamp tolerance', 'signature', 'replay', 'revocation'])
  t.same(REFUSAL_RETURN_CODES, {
    bad_serial: 2,
    client_id_mismatch: 2,
    not_a_device_credential: 4,
    bad_timestamp: 4,
    bad_encoding: 4,
    bad_certificate: 4,
    certificate_not_yet_valid: 4,
    certificate_expired: 4,
    untrusted_certificate: 4,
    cn_mismatch: 4,
    timestamp_out_of_tolerance: 4,
    bad_signature: 4,
    replayed: 4,
    revoked: 5,
    server_unavailable: 3
  })
})

t.test('accepts DER and P1363 signatures, integer and decimal-string timestamps, and chains', async (t) => {
  const { connect, admitted } = setup()
  const cases: Array<[string, () => Promise<DeviceIdentity>, Parameters<typeof devicePassword>[1]]> = [
    ['DER signature, integer timestamp', async () => await pki.device(uniqueSerial()), { timestamp: T0 }],
    ['P1363 signature', async () => await pki.device(uniqueSerial()), { timestamp: T0, signatureFormat: 'p1363' }],
    ['decimal string timestamp', async () => await pki.device(uniqueSerial()), { timestamp: String(T0) }],
    ['via an intermediate CA', async () => await pki.deviceViaIntermediate(uniqueSerial()), { timestamp: T0 }]
  ]
  for (const [name, make, options] of cases) {
    const identity = await make()
    const credential = credentialOf(identity, options)
    if (options?.signatureFormat === 'p1363') t.equal(Buffer.from(credential.signature as string, 'base64').length, 64, 'raw r||s is 64 bytes')
    else t.not(Buffer.from(credential.signature as string, 'base64').length, 64, 'DER signature')
    const verdict = await connect(identity.serial, credential)
    t.ok(verdict.ok, name)
    if (!verdict.ok) { t.comment(verdict.detail); continue }
    t.equal(verdict.serial, identity.serial)
    t.equal(verdict.certificate.commonName, identity.serial)
    const stored = admitted.get(identity.serial)
    t.equal(stored?.fingerprint, createHash('sha256').update(identity.certDer).digest('hex'), 'fingerprint: SHA-256 of the DER, lowercase hex')
    t.match(stored?.fingerprint, /^[0-9a-f]{64}$/)
    t.equal(stored?.notAfter.getTime(), new Date(new X509Certificate(identity.certDer).validTo).getTime(), 'notAfter of the certificate')
  }
})

t.test('check 1: serial well-formed and equal to the client id → 2', async (t) => {
  const { connect } = setup()
  const identity = await pki.device(uniqueSerial())
  const credential = credentialOf(identity, { timestamp: T0 })
  for (const bad of ['', 'has space', 'a/b', 'a+b', 'a#b', 'x'.repeat(65), `${identity.serial}\n`, `${identity.serial}\u0000`, 'ünï']) {
    refusedWith(t, await connect(bad, credential), 'bad_serial', bad)
  }
  refusedWith(t, await connect(undefined, credential, identity.serial), 'bad_serial', undefined)
  refusedWith(t, await connect(identity.serial, credential, `${identity.serial}-other`), 'client_id_mismatch', identity.serial)
  refusedWith(t, await connect(identity.serial, credential, ''), 'client_id_mismatch', identity.serial)
  // the serial check comes first: a bad serial with an otherwise broken credential is still bad_serial
  refusedWith(t, await connect('a/b', { cert: 'x' }), 'bad_serial', 'a/b')
  // 64 characters are allowed
  const longSerial = `L${'x'.repeat(63)}`
  const long = await pki.device(longSerial)
  t.ok((await connect(longSerial, credentialOf(long, { timestamp: T0 }))).ok, 'a 64-character serial is accepted')
})

t.test('a password that is not a device credential → not_a_device_credential (4)', async (t) => {
  const { connect } = setup()
  const identity = await pki.device(uniqueSerial())
  const serial = identity.serial
  const good = devicePassword(identity, { timestamp: T0 })
  const invalidUtf8 = Buffer.concat([Buffer.from('{"note":"'), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from(`",${good.slice(1)}`)])
  const padded = (size: number): string => {
    const base = { ...JSON.parse(good) as Credential, pad: '' }
    base.pad = 'p'.repeat(size - JSON.stringify(base).length)
    return JSON.stringify(base)
  }
  t.equal(Buffer.byteLength(padded(MAX_PASSWORD_BYTES + 1)), MAX_PASSWORD_BYTES + 1)
  const cases: Array<[string, Buffer | string | undefined]> = [
    ['no password', undefined],
    ['empty password', ''],
    ['a plain password', 'hunter2'],
    ['garbage bytes', Buffer.from([0x7b, 0x00, 0xff, 0x13, 0x37])],
    ['truncated JSON', good.slice(0, 40)],
    ['a JSON array', `[${good}]`],
    ['JSON null', 'null'],
    ['a JSON object without cert', JSON.stringify({ timestamp: T0, signature: 'AAAA' })],
    ['__proto__ smuggling cert', '{"__proto__":{"cert":"AAAA"}}'],
    ['invalid UTF-8 inside an otherwise good credential', invalidUtf8],
    ['leading whitespace', ` ${good}`],
    ['over 16 KiB', padded(MAX_PASSWORD_BYTES + 1)]
  ]
  for (const [name, password] of cases) {
    const verdict = await connect(serial, password)
    t.notOk(verdict.ok, name)
    if (!verdict.ok) t.equal(verdict.reason, 'not_a_device_credential', name)
  }
  t.ok((await connect(serial, padded(MAX_PASSWORD_BYTES))).ok, 'exactly 16 KiB is still a credential (and accepted)')
  t.equal(parseDeviceCredential(Buffer.from(good))?.timestamp, T0)
})

t.test('check 2: timestamp present and an integer → bad_timestamp (4)', async (t) => {
  const { connect } = setup()
  const identity = await pki.device(uniqueSerial())
  const base = credentialOf(identity, { timestamp: T0 })
  for (const timestamp of [undefined, null, 1.5, '1.5', 'abc', '', -1, '-1', ' 1', '1e9', 1e300, Number.MAX_SAFE_INTEGER + 1, true, {}, [T0], '0x10']) {
    const credential = { ...base, timestamp }
    if (timestamp === undefined) delete credential.timestamp
    refusedWith(t, await connect(identity.serial, credential), 'bad_timestamp', identity.serial)
  }
  // check 2 comes before check 3: a bad timestamp with a bad signature is bad_timestamp
  refusedWith(t, await connect(identity.serial, { ...base, timestamp: 'abc', signature: '!!' }), 'bad_timestamp', identity.serial)
})

t.test('check 3: signature, cert and chain are valid base64 → bad_encoding (4)', async (t) => {
  const { connect } = setup()
  const identity = await pki.device(uniqueSerial())
  const base = credentialOf(identity, { timestamp: T0 })
  const cases: Credential[] = [
    { signature: 'not base64!' },
    { signature: '' },
    { signature: true },
    { signature: 12 },
    { signature: undefined },
    { signature: 'AAAAA' }, // not a multiple of 4 characters
    { signature: 'AA=A' }, // padding inside
    { signature: 'AAAA====' }, // too much padding
    { signature: '=AAA' },
    { cert: 123 },
    { cert: '' },
    { cert: 'AAAA AAAA' },
    { cert: (base.cert as string).slice(1) }, // not a multiple of 4 characters
    { chain: 'x' },
    { chain: {} },
    { chain: [123] },
    { chain: ['***'] },
    { chain: Array.from({ length: 5 }, () => base.cert) }
  ]
  for (const patch of cases) {
    const credential = { ...base, ...patch }
    for (const key of Object.keys(patch)) if (patch[key] === undefined) delete credential[key]
    refusedWith(t, await connect(identity.serial, credential), 'bad_encoding', identity.serial)
  }
  // none of the above used up the timestamp, and an empty chain is fine
  t.match(await connect(identity.serial, { ...base, chain: [] }), { ok: true }, 'an empty chain is fine')
})

t.test('check 4: the cert parses and is inside its validity period', async (t) => {
  const { connect } = setup()
  const serial = uniqueSerial()
  const identity = await pki.device(serial)
  const base = credentialOf(identity, { timestamp: T0 })
  refusedWith(t, await connect(serial, { ...base, cert: Buffer.from('definitely not DER').toString('base64') }), 'bad_certificate', serial)
  refusedWith(t, await connect(serial, { ...base, cert: identity.certDer.subarray(0, 100).toString('base64') }), 'bad_certificate', serial)
  refusedWith(t, await connect(serial, { ...base, chain: [Buffer.from('nope').toString('base64')] }), 'bad_certificate', serial)

  // a certificate whose validity starts tomorrow and one that ended yesterday
  const DAY = 86_400_000
  const future = await pki.device(uniqueSerial(), { notBefore: new Date(clockMs + DAY), days: 30 })
  refusedWith(t, await connect(future.serial, credentialOf(future, { timestamp: T0 })), 'certificate_not_yet_valid', future.serial)
  const expired = await pki.device(uniqueSerial(), { notBefore: new Date(clockMs - 10 * DAY), days: 1 })
  refusedWith(t, await connect(expired.serial, credentialOf(expired, { timestamp: T0 })), 'certificate_expired', expired.serial)

  // the same certificates on a clock inside their validity: accepted (the dates are checked against `now`)
  const futureStart = new X509Certificate(future.certDer).validFrom
  clockMs = Date.parse(futureStart) + 1000
  const at = Math.floor(clockMs / 1000)
  t.ok((await connect(future.serial, credentialOf(future, { timestamp: at }))).ok, 'valid once notBefore has passed')
  const expiredEnd = Date.parse(new X509Certificate(expired.certDer).validTo)
  clockMs = expiredEnd - 5000
  t.ok((await connect(expired.serial, credentialOf(expired, { timestamp: Math.floor(clockMs / 1000) }))).ok, 'valid before notAfter')
  clockMs = expiredEnd + 1000
  refusedWith(t, await connect(expired.serial, credentialOf(expired, { timestamp: Math.floor(clockMs / 1000) })), 'certificate_expired', expired.serial)

  // check 4 comes before check 6: an expired cert with a wrong CN is certificate_expired
  clockMs = T0 * 1000
  refusedWith(t, await connect('someone-else', credentialOf({ ...expired, serial: 'someone-else' }, { timestamp: T0 })), 'certificate_expired', 'someone-else')
})

t.test('check 5: the cert chains to the Fleet CA → untrusted_certificate (4)', async (t) => {
  const { connect } = setup()
  const stranger = await createFleetCa()
  const strangerIssuer = { certificate: stranger.certificate, privateKey: stranger.privateKey }
  const foreign = await makeIdentity(strangerIssuer, uniqueSerial())
  refusedWith(t, await connect(foreign.serial, credentialOf(foreign, { timestamp: T0 })), 'untrusted_certificate', foreign.serial)

  // a foreign CA that calls itself "Fleet CA" and even claims to be in the chain
  const impostor = await createFleetCa()
  const impostorDevice = await makeIdentity({ certificate: impostor.certificate, privateKey: impostor.privateKey }, uniqueSerial())
  refusedWith(t, await connect(impostorDevice.serial, credentialOf({ ...impostorDevice, chain: [Buffer.from(impostor.certificate.rawData)] }, { timestamp: T0 })), 'untrusted_certificate', impostorDevice.serial)

  // an intermediate-signed device without its chain, or with the wrong intermediate
  const viaIntermediate = await pki.deviceViaIntermediate(uniqueSerial())
  refusedWith(t, await connect(viaIntermediate.serial, credentialOf({ ...viaIntermediate, chain: undefined }, { timestamp: T0 })), 'untrusted_certificate', viaIntermediate.serial)
  const otherIntermediate = await pki.deviceViaIntermediate(uniqueSerial())
  refusedWith(t, await connect(viaIntermediate.serial, credentialOf({ ...viaIntermediate, chain: otherIntermediate.chain }, { timestamp: T0 })), 'untrusted_certificate', viaIntermediate.serial)

  // a device certificate (not a CA) used as an intermediate
  const leafIssuer = await issueCertificate(pki.ca, { commonName: 'leaf-as-ca' })
  const underLeaf = await makeIdentity({ certificate: leafIssuer.certificate, privateKey: leafIssuer.privateKey }, uniqueSerial())
  refusedWith(t, await connect(underLeaf.serial, credentialOf({ ...underLeaf, chain: [Buffer.from(leafIssuer.certificate.rawData)] }, { timestamp: T0 })), 'untrusted_certificate', underLeaf.serial)

  // check 5 comes before check 6: a foreign cert with a wrong CN is untrusted_certificate
  refusedWith(t, await connect('not-the-cn', credentialOf({ ...foreign, serial: 'not-the-cn' }, { timestamp: T0 })), 'untrusted_certificate', 'not-the-cn')
})

t.test('check 5: an intermediate that expires later is refused from then on, despite the cache', async (t) => {
  const { connect } = setup()
  const device = await pki.deviceViaIntermediate(uniqueSerial()) // intermediate valid 365 days, device 5 years
  const accepted = await connect(device.serial, credentialOf(device, { timestamp: T0 }))
  t.ok(accepted.ok, 'accepted while the intermediate is in date (and now cached)')
  clockMs = (T0 + 400 * 86_400) * 1000
  refusedWith(t, await connect(device.serial, credentialOf(device, { timestamp: clockMs / 1000 })), 'untrusted_certificate', device.serial)
})

t.test('check 4: one DER certificate per field, nothing after it; the cache cannot be poisoned for a real leaf and chain', async (t) => {
  const { connect } = setup()
  const device = await pki.deviceViaIntermediate(uniqueSerial())
  const intermediate = device.chain![0]!
  const base = credentialOf(device, { timestamp: T0 })
  // leaf‖intermediate without a chain hashed like the real (leaf, [intermediate]) and, refused as
  // untrusted, shut the real device out while the verdict stayed cached
  refusedWith(t, await connect(device.serial, { ...base, cert: Buffer.concat([device.certDer, intermediate]).toString('base64'), chain: undefined }), 'bad_certificate', device.serial)
  refusedWith(t, await connect(device.serial, { ...base, cert: Buffer.concat([device.certDer, Buffer.from([0])]).toString('base64') }), 'bad_certificate', device.serial)
  refusedWith(t, await connect(device.serial, { ...base, chain: [Buffer.concat([intermediate, Buffer.from('x')]).toString('base64')] }), 'bad_certificate', device.serial)
  const accepted = await connect(device.serial, base)
  t.ok(accepted.ok, 'the real leaf and chain are accepted after those attempts')
  t.equal(accepted.ok && accepted.certificate.fingerprint, createHash('sha256').update(device.certDer).digest('hex'), 'the fingerprint is that of the DER certificate')
})

t.test('check 4: a certificate whose key is not ECDSA P-256 → bad_certificate (4)', async (t) => {
  const { connect } = setup()
  const serial = uniqueSerial()
  const keys = await webcrypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-384' }, true, ['sign', 'verify'])
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: '01', subject: `CN=${serial}`, issuer: pki.ca.certificate.subject, notBefore: new Date(clockMs - 60_000), notAfter: new Date(clockMs + 86_400_000),
    publicKey: keys.publicKey, signingKey: pki.ca.privateKey, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' }
  })
  const privateKey = createPrivateKey({ key: Buffer.from(await webcrypto.subtle.exportKey('pkcs8', keys.privateKey)), format: 'der', type: 'pkcs8' })
  const signature = sign('sha256', Buffer.from(`${serial}:${T0}`), privateKey)
  const verdict = await connect(serial, { timestamp: T0, signature: signature.toString('base64'), cert: Buffer.from(certificate.rawData).toString('base64') })
  refusedWith(t, verdict, 'bad_certificate', serial)
  t.match(!verdict.ok && verdict.detail, /P-256/, 'the detail names the curve')
})

t.test('check 6: the subject CN equals the serial → cn_mismatch (4)', async (t) => {
  const { connect } = setup()
  const identity = await pki.device(uniqueSerial())
  const victim = uniqueSerial()
  // a genuine device signs a correct credential for another serial with its own key and cert
  refusedWith(t, await connect(victim, credentialOf({ ...identity, serial: victim }, { timestamp: T0 })), 'cn_mismatch', victim)
  // check 6 comes before check 7: a wrong CN with a stale timestamp is still cn_mismatch
  refusedWith(t, await connect(victim, credentialOf({ ...identity, serial: victim }, { timestamp: T0 - 3600 })), 'cn_mismatch', victim)
})

t.test('check 7: |now − timestamp| ≤ tolerance → timestamp_out_of_tolerance (4)', async (t) => {
  const { connect } = setup({ toleranceSeconds: 60 })
  const identity = await pki.device(uniqueSerial())
  const serial = identity.serial
  t.ok((await connect(serial, credentialOf(identity, { timestamp: T0 - 60 }))).ok, 'exactly 60 s in the past')
  t.ok((await connect(serial, credentialOf(identity, { timestamp: T0 + 60 }))).ok, 'exactly 60 s in the future')
  refusedWith(t, await connect(serial, credentialOf(identity, { timestamp: T0 - 61 })), 'timestamp_out_of_tolerance', serial)
  refusedWith(t, await connect(serial, credentialOf(identity, { timestamp: T0 + 61 })), 'timestamp_out_of_tolerance', serial)
  refusedWith(t, await connect(serial, credentialOf(identity, { timestamp: 0 })), 'timestamp_out_of_tolerance', serial)
  refusedWith(t, await connect(serial, credentialOf(identity, { timestamp: '999999999999999' })), 'timestamp_out_of_tolerance', serial)
  // check 7 comes before check 8: a stale timestamp with a bad signature is out of tolerance
  refusedWith(t, await connect(serial, { ...credentialOf(identity, { timestamp: T0 - 61 }), signature: 'AAAA' }), 'timestamp_out_of_tolerance', serial)

  const wide = setup({ toleranceSeconds: 600 })
  const other = await pki.device(uniqueSerial())
  t.ok((await wide.connect(other.serial, credentialOf(other, { timestamp: T0 - 599 }))).ok, 'TIMESTAMP_TOLERANCE is honoured')
})

t.test('check 8: the signature verifies with the cert key → bad_signature (4)', async (t) => {
  const { connect } = setup()
  const identity = await pki.device(uniqueSerial())
  const serial = identity.serial
  const stranger = await pki.device(uniqueSerial())
  const ts = T0
  // signed by another key
  refusedWith(t, await connect(serial, { ...credentialOf(identity, { timestamp: ts }), signature: credentialOf({ ...stranger, serial }, { timestamp: ts }).signature }), 'bad_signature', serial)
  // over another message: another timestamp, another serial, or the timestamp written differently
  refusedWith(t, await connect(serial, { ...credentialOf(identity, { timestamp: ts + 1 }), timestamp: ts }), 'bad_signature', serial)
  refusedWith(t, await connect(serial, { ...credentialOf(identity, { timestamp: ts }), signature: credentialOf(stranger, { timestamp: ts }).signature }), 'bad_signature', serial)
  const key = createPrivateKey(identity.privateKey as string)
  const overJson = sign('sha256', Buffer.from(`${serial}:"${ts}"`), key).toString('base64')
  refusedWith(t, await connect(serial, { ...credentialOf(identity, { timestamp: ts }), signature: overJson }), 'bad_signature', serial)
  // bytes that are no signature at all, P1363-sized zeros, and a DER signature with trailing garbage
  refusedWith(t, await connect(serial, { ...credentialOf(identity, { timestamp: ts }), signature: Buffer.from('garbage!!').toString('base64') }), 'bad_signature', serial)
  refusedWith(t, await connect(serial, { ...credentialOf(identity, { timestamp: ts }), signature: Buffer.alloc(64).toString('base64') }), 'bad_signature', serial)
  const good = Buffer.from(credentialOf(identity, { timestamp: ts }).signature as string, 'base64')
  refusedWith(t, await connect(serial, { ...credentialOf(identity, { timestamp: ts }), signature: Buffer.concat([good, Buffer.from([0])]).toString('base64') }), 'bad_signature', serial)
  // a failed attempt does not use up the timestamp: the genuine credential for it still passes
  t.ok((await connect(serial, credentialOf(identity, { timestamp: ts }))).ok, 'the real device is accepted with the same timestamp')
})

t.test('check 9: a (serial, timestamp) is accepted once, whatever the signature bytes', async (t) => {
  const { connect } = setup()
  for (const signatureFormat of ['der', 'p1363'] as const) {
    const identity = await pki.device(uniqueSerial())
    const serial = identity.serial
    const accepted = credentialOf(identity, { timestamp: T0, signatureFormat })
    t.ok((await connect(serial, accepted)).ok, `${signatureFormat}: first connect accepted`)
    refusedWith(t, await connect(serial, accepted), 'replayed', serial)

    const signature = Buffer.from(accepted.signature as string, 'base64')
    const malleated = malleate(signature)
    t.not(malleated.toString('base64'), accepted.signature, 'the malleated signature differs')
    t.ok(verify('sha256', Buffer.from(`${serial}:${T0}`), { key: createPublicKey(identity.privateKey as string), dsaEncoding: signatureFormat === 'p1363' ? 'ieee-p1363' : 'der' }, malleated),
      '(r, n − s) is a valid signature of the same message')
    refusedWith(t, await connect(serial, { ...accepted, signature: malleated.toString('base64') }), 'replayed', serial)
    // the same timestamp written as a string, with leading zeros, or re-signed: still the same pair
    refusedWith(t, await connect(serial, { ...accepted, timestamp: String(T0) }), 'replayed', serial)
    refusedWith(t, await connect(serial, { ...accepted, timestamp: `00${T0}` }), 'replayed', serial)
    refusedWith(t, await connect(serial, credentialOf(identity, { timestamp: T0, signatureFormat: signatureFormat === 'der' ? 'p1363' : 'der' })), 'replayed', serial)

    t.ok((await connect(serial, credentialOf(identity, { timestamp: T0 + 1, signatureFormat }))).ok, 'a new timestamp is accepted')
  }
  // the pair is per serial: another device may use the same timestamp
  const other = await pki.device(uniqueSerial())
  t.ok((await connect(other.serial, credentialOf(other, { timestamp: T0 }))).ok, 'same timestamp, other serial')
})

t.test('check 9: a replay stays refused for as long as its timestamp is within tolerance', async (t) => {
  const { connect } = setup({ toleranceSeconds: 60 })
  const identity = await pki.device(uniqueSerial(), { notBefore: new Date(T0 * 1000 - 3_600_000) })
  const serial = identity.serial
  const ts = T0
  const credential = credentialOf(identity, { timestamp: ts })
  // first use at the earliest moment the timestamp is acceptable…
  clockMs = (ts - 60) * 1000
  t.match(await connect(serial, credential), { ok: true }, 'accepted at timestamp − 60 s')
  // …replayed at every later moment it is still acceptable, up to and including timestamp + 60 s
  for (const atMs of [ts * 1000, (ts + 59) * 1000, (ts + 60) * 1000 - 1, (ts + 60) * 1000]) {
    clockMs = atMs
    refusedWith(t, await connect(serial, credential), 'replayed', serial)
  }
  clockMs = (ts + 60) * 1000 + 1
  refusedWith(t, await connect(serial, credential), 'timestamp_out_of_tolerance', serial)
})

t.test('check 10: a revoked device → revoked (5); admission failures → server_unavailable (3)', async (t) => {
  const { connect, revoked, admitted } = setup()
  const identity = await pki.device(uniqueSerial())
  t.ok((await connect(identity.serial, credentialOf(identity, { timestamp: T0 }))).ok)
  t.ok(admitted.has(identity.serial), 'registered just in time')
  revoked.add(identity.serial)
  refusedWith(t, await connect(identity.serial, credentialOf(identity, { timestamp: T0 + 1 })), 'revoked', identity.serial)
  // replay is checked before revocation: the accepted pair is a replay, revoked or not
  refusedWith(t, await connect(identity.serial, credentialOf(identity, { timestamp: T0 })), 'replayed', identity.serial)
  // a refused pair was never accepted: once unrevoked, the device may retry it
  refusedWith(t, await connect(identity.serial, credentialOf(identity, { timestamp: T0 + 1 })), 'revoked', identity.serial)
  revoked.delete(identity.serial)
  t.ok((await connect(identity.serial, credentialOf(identity, { timestamp: T0 + 1 }))).ok, 'accepted after unrevoke with the refused timestamp')

  const failing = setup({ admission: { admit: async () => { throw new Error('database down') } } })
  const other = await pki.device(uniqueSerial())
  const verdict = await failing.connect(other.serial, credentialOf(other, { timestamp: T0 }))
  refusedWith(t, verdict, 'server_unavailable', other.serial)
  if (!verdict.ok) t.match(verdict.detail, /database down/)
  t.equal(REFUSAL_RETURN_CODES.server_unavailable, 3)
})
