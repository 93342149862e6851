// Creates the Fleet CA and device certificates (ECDSA P-256) with @peculiar/x509 and lays them
// out on disk as contract §1 says. Verification lives in trust.ts (node:crypto), not here.
import 'reflect-metadata' // @peculiar/x509's dependency injection needs it loaded first
import { webcrypto, randomBytes } from 'node:crypto'

type CryptoKey = webcrypto.CryptoKey
type CryptoKeyPair = webcrypto.CryptoKeyPair
import { mkdir, writeFile, readFile, access, rename } from 'node:fs/promises'
import path from 'node:path'
import * as x509 from '@peculiar/x509'

x509.cryptoProvider.set(webcrypto as unknown as Parameters<typeof x509.cryptoProvider.set>[0])

const EC_ALGORITHM = { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' } as const
const DAY_MS = 86_400_000

export interface Issuer {
  certificate: x509.X509Certificate
  privateKey: CryptoKey
}

export interface IssuedCertificate {
  certificate: x509.X509Certificate
  /** PKCS#8 PEM ("PRIVATE KEY"). */
  keyPem: string
  privateKey: CryptoKey
}

function positiveSerialNumber (): string {
  const bytes = randomBytes(16)
  bytes[0] = bytes[0]! & 0x7f // DER INTEGER must stay positive
  return bytes.toString('hex')
}

async function generateKeys (): Promise<CryptoKeyPair> {
  return await webcrypto.subtle.generateKey(EC_ALGORITHM, true, ['sign', 'verify']) as CryptoKeyPair
}

async function privateKeyPem (key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key)
  return x509.PemConverter.encode(der, 'PRIVATE KEY')
}

interface Validity { notBefore?: Date, days: number }

function validityPeriod ({ notBefore = new Date(Date.now() - 60_000), days }: Validity): { notBefore: Date, notAfter: Date } {
  return { notBefore, notAfter: new Date(notBefore.getTime() + days * DAY_MS) }
}

/** Ten calendar years (contract §1), not 3,650 days, which fall short by the leap days. */
function tenYears (): { notBefore: Date, notAfter: Date } {
  const { notBefore } = validityPeriod({ days: 0 })
  const notAfter = new Date(notBefore)
  notAfter.setUTCFullYear(notAfter.getUTCFullYear() + 10)
  return { notBefore, notAfter }
}

/** A self-signed Fleet CA: CN=Fleet CA, 10 years, CA:TRUE, keyCertSign + cRLSign. */
export async function createFleetCa (options: { days?: number, commonName?: string } = {}): Promise<IssuedCertificate> {
  const keys = await generateKeys()
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: positiveSerialNumber(),
    name: `CN=${options.commonName ?? 'Fleet CA'}`,
    ...(options.days === undefined ? tenYears() : validityPeriod({ days: options.days })),
    keys,
    signingAlgorithm: EC_ALGORITHM,
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey)
    ]
  })
  return { certificate, keyPem: await privateKeyPem(keys.privateKey), privateKey: keys.privateKey }
}

export interface CertificateRequest {
  commonName: string
  days?: number
  notBefore?: Date
  /** Make an intermediate CA instead of a device (leaf) certificate. */
  intermediateCa?: boolean
}

/** A certificate signed by `issuer`: a device certificate (CN=<serial>) or an intermediate CA. */
export async function issueCertificate (issuer: Issuer, request: CertificateRequest): Promise<IssuedCertificate> {
  const keys = await generateKeys()
  const usage = request.intermediateCa === true
    ? [new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true)]
    : [new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])]
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: positiveSerialNumber(),
    subject: `CN=${request.commonName}`,
    issuer: issuer.certificate.subject,
    ...validityPeriod({ notBefore: request.notBefore, days: request.days ?? 1825 }),
    publicKey: keys.publicKey,
    signingKey: issuer.privateKey,
    signingAlgorithm: EC_ALGORITHM,
    extensions: [
      ...usage,
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuer.certificate)
    ]
  })
  return { certificate, keyPem: await privateKeyPem(keys.privateKey), privateKey: keys.privateKey }
}

export async function importPrivateKeyPem (pem: string): Promise<CryptoKey> {
  return await webcrypto.subtle.importKey('pkcs8', x509.PemConverter.decodeFirst(pem), EC_ALGORITHM, true, ['sign'])
}

export function certificateFromPem (pem: string): x509.X509Certificate {
  return new x509.X509Certificate(pem)
}

// ---- files (contract §1) ----

export const FLEET_CA_CERT_FILE = 'fleet_ca.pem'
export const FLEET_CA_KEY_FILE = 'fleet_ca_key.pem'

async function exists (file: string): Promise<boolean> {
  return await access(file).then(() => true, () => false)
}

/** A private key is written to a new file of mode 0600 and moved into place: overwriting keeps an old file's mode. */
async function writeKeyFile (file: string, pem: string): Promise<void> {
  const staged = `${file}.${process.pid}.tmp`
  await writeFile(staged, pem, { mode: 0o600, flag: 'wx' })
  await rename(staged, file)
}

export async function fleetCaExists (caDir: string): Promise<boolean> {
  return await exists(path.join(caDir, FLEET_CA_CERT_FILE)) || await exists(path.join(caDir, FLEET_CA_KEY_FILE))
}

export async function writeFleetCa (caDir: string, ca: IssuedCertificate): Promise<{ certPath: string, keyPath: string }> {
  await mkdir(caDir, { recursive: true, mode: 0o700 })
  const certPath = path.join(caDir, FLEET_CA_CERT_FILE)
  const keyPath = path.join(caDir, FLEET_CA_KEY_FILE)
  await writeKeyFile(keyPath, ca.keyPem)
  await writeFile(certPath, ca.certificate.toString('pem') + '\n', { mode: 0o644 })
  return { certPath, keyPath }
}

export async function readFleetCa (caDir: string): Promise<Issuer> {
  const [certPem, keyPem] = await Promise.all([
    readFile(path.join(caDir, FLEET_CA_CERT_FILE), 'utf8'),
    readFile(path.join(caDir, FLEET_CA_KEY_FILE), 'utf8')
  ])
  return { certificate: certificateFromPem(certPem), privateKey: await importPrivateKeyPem(keyPem) }
}

export interface DeviceFiles { derPath: string, pemPath: string, keyPath: string }

export async function writeDeviceCredentials (devicesDir: string, serial: string, issued: IssuedCertificate): Promise<DeviceFiles> {
  const dir = path.join(devicesDir, serial)
  await mkdir(dir, { recursive: true, mode: 0o700 })
  const files = {
    derPath: path.join(dir, 'device_cert.der'),
    pemPath: path.join(dir, 'device_cert.pem'),
    keyPath: path.join(dir, 'device_key.pem')
  }
  await writeKeyFile(files.keyPath, issued.keyPem)
  await writeFile(files.derPath, Buffer.from(issued.certificate.rawData), { mode: 0o644 })
  await writeFile(files.pemPath, issued.certificate.toString('pem') + '\n', { mode: 0o644 })
  return files
}
