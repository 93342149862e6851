// Decides whether a device CONNECT is accepted: the ten checks of contract §2 as one ordered list
// of named steps, each failing with one reason from a closed set. Knows nothing of MQTT libraries:
// it takes the CONNECT's client id, username and password bytes and answers a verdict.
import type { FleetTrust, ParsedCertificate } from '../certs/trust.js'
import { isValidSerial } from '../topics.js'
import type { ReplayGuard } from './replay-guard.js'

/** Every reason a CONNECT can be refused for, with the MQTT 3.1.1 CONNACK return code it maps to. */
export const REFUSAL_RETURN_CODES = {
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
} as const

export type RefusalReason = keyof typeof REFUSAL_RETURN_CODES
export const REFUSAL_REASONS = Object.keys(REFUSAL_RETURN_CODES) as RefusalReason[]

export interface Refusal { ok: false, reason: RefusalReason, detail: string, serial: string | undefined }
export interface Acceptance { ok: true, serial: string, certificate: ParsedCertificate }
export type Verdict = Acceptance | Refusal

/** What the authenticator needs from the device registry. */
export interface DeviceAdmission {
  /** Registers an unknown device (just in time) and answers whether it is revoked. */
  admit (serial: string, certificate: { fingerprint: string, notAfter: Date }): Promise<{ revoked: boolean }>
}

export interface ConnectAttempt {
  clientId: string
  username: string | undefined
  password: Buffer | undefined
  /** The password already parsed by parseDeviceCredential (the caller needed it first), so it is parsed once. */
  credential?: DeviceCredential
}

export const MAX_PASSWORD_BYTES = 16 * 1024

export interface DeviceCredential {
  timestamp?: unknown
  signature?: unknown
  cert?: unknown
  chain?: unknown
}

/** Parsed state threaded through the steps; each step fills in what the next ones need. */
interface Attempt {
  readonly clientId: string
  readonly serial: string | undefined
  readonly credential: DeviceCredential
  timestamp?: number
  signature?: Buffer
  certDer?: Buffer
  chainDer?: Buffer[]
  certificate?: ParsedCertificate
}

type StepResult = { reason: RefusalReason, detail: string } | undefined
interface Step { name: string, run: (attempt: Attempt) => StepResult | Promise<StepResult> }

const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/
const INTEGER = /^\d{1,15}$/
const utf8 = new TextDecoder('utf-8', { fatal: true })

function decodeBase64 (value: unknown): Buffer | undefined {
  if (typeof value !== 'string' || value.length === 0 || !BASE64.test(value)) return undefined
  return Buffer.from(value, 'base64')
}

function parseTimestamp (value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isSafeInteger(value) && value >= 0 ? value : undefined
  if (typeof value === 'string' && INTEGER.test(value)) return Number(value)
  return undefined
}

/**
 * Tells a device credential (a JSON object with a `cert` field) from any other password.
 * Returns undefined for anything that is not a device credential: observers, garbage, oversize.
 */
export function parseDeviceCredential (password: Buffer | undefined): DeviceCredential | undefined {
  if (password === undefined || password.length === 0 || password.length > MAX_PASSWORD_BYTES) return undefined
  if (password[0] !== 0x7b) return undefined // '{': skip JSON.parse for plain passwords
  try {
    const value: unknown = JSON.parse(utf8.decode(password))
    if (typeof value === 'object' && value !== null && !Array.isArray(value) && 'cert' in value) return value as DeviceCredential
  } catch {}
  return undefined
}

export interface DeviceAuthenticatorDeps {
  trust: FleetTrust
  replayGuard: ReplayGuard
  admission: DeviceAdmission
  timestampToleranceSeconds: number
  now?: () => number
}

export function createDeviceAuthenticator (deps: DeviceAuthenticatorDeps) {
  const now = deps.now ?? Date.now
  const toleranceMs = deps.timestampToleranceSeconds * 1000

  // Contract §2, in order; the first failing step decides the refusal.
  const steps: readonly Step[] = [
    {
      name: 'serial',
      run: (a) => {
        if (!isValidSerial(a.serial)) return { reason: 'bad_serial', detail: 'username must be the serial: 1-64 of A-Z a-z 0-9 _ - .' }
        if (a.serial !== a.clientId) return { reason: 'client_id_mismatch', detail: 'client id must equal the serial' }
      }
    },
    {
      name: 'timestamp',
      run: (a) => {
        a.timestamp = parseTimestamp(a.credential.timestamp)
        if (a.timestamp === undefined) return { reason: 'bad_timestamp', detail: 'timestamp must be unix seconds as an integer or a decimal string' }
      }
    },
    {
      name: 'encoding',
      run: (a) => {
        a.signature = decodeBase64(a.credential.signature)
        a.certDer = decodeBase64(a.credential.cert)
        const chain = a.credential.chain ?? []
        a.chainDer = Array.isArray(chain) && chain.length <= 4 ? chain.map(decodeBase64).filter(der => der !== undefined) : []
        if (a.signature === undefined) return { reason: 'bad_encoding', detail: 'signature is not valid base64' }
        if (a.certDer === undefined) return { reason: 'bad_encoding', detail: 'cert is not valid base64' }
        if (!Array.isArray(chain) || a.chainDer.length !== chain.length) {
          return { reason: 'bad_encoding', detail: 'chain must be an array of at most 4 base64 DER certificates' }
        }
      }
    },
    {
      name: 'certificate',
      run: (a) => {
        const check = deps.trust.checkCertificate(a.certDer!, a.chainDer!)
        if (!check.ok) return { reason: 'bad_certificate', detail: check.detail }
        a.certificate = check.certificate
        const at = now()
        if (at < check.certificate.notBefore) return { reason: 'certificate_not_yet_valid', detail: `valid from ${new Date(check.certificate.notBefore).toISOString()}` }
        if (at > check.certificate.notAfter) return { reason: 'certificate_expired', detail: `expired ${new Date(check.certificate.notAfter).toISOString()}` }
      }
    },
    {
      name: 'chain',
      run: (a) => {
        const { chainError, chainNotBefore, chainNotAfter } = a.certificate!
        if (chainError !== undefined) return { reason: 'untrusted_certificate', detail: chainError }
        const at = now()
        if (at < chainNotBefore || at > chainNotAfter) return { reason: 'untrusted_certificate', detail: 'an intermediate CA certificate is outside its validity period' }
      }
    },
    {
      name: 'common name',
      run: (a) => {
        if (a.certificate!.commonName !== a.serial) return { reason: 'cn_mismatch', detail: `certificate CN is ${JSON.stringify(a.certificate!.commonName ?? null)}` }
      }
    },
    {
      name: 'timestamp tolerance',
      run: (a) => {
        const skewMs = Math.abs(now() - a.timestamp! * 1000)
        if (skewMs > toleranceMs) return { reason: 'timestamp_out_of_tolerance', detail: `timestamp is ${Math.round(skewMs / 1000)} s from server time (tolerance ${deps.timestampToleranceSeconds} s)` }
      }
    },
    {
      name: 'signature',
      run: (a) => {
        const message = Buffer.from(`${a.serial}:${a.timestamp}`, 'utf8')
        if (!deps.trust.verifySignature(a.certificate!, message, a.signature!)) return { reason: 'bad_signature', detail: 'signature does not verify with the certificate key' }
      }
    },
    {
      name: 'replay',
      run: async (a) => {
        // a timestamp is acceptable for 2 × tolerance, both ends included: the claim must outlive that
        const fresh = await deps.replayGuard.claim(a.serial!, a.timestamp!, toleranceMs * 2 + 1000)
        if (!fresh) return { reason: 'replayed', detail: `a connection with timestamp ${a.timestamp} was already accepted` }
      }
    },
    {
      name: 'revocation',
      run: async (a) => {
        const { fingerprint, notAfter } = a.certificate!
        const { revoked } = await deps.admission.admit(a.serial!, { fingerprint, notAfter: new Date(notAfter) })
        if (revoked) {
          // contract §2 check 9 is about accepted connections: once unrevoked, the device may retry with this timestamp
          await deps.replayGuard.release(a.serial!, a.timestamp!)
          return { reason: 'revoked', detail: 'the device is revoked' }
        }
      }
    }
  ]

  async function authenticate (connect: ConnectAttempt): Promise<Verdict> {
    const serial = typeof connect.username === 'string' ? connect.username : undefined
    const credential = connect.credential ?? parseDeviceCredential(connect.password)
    if (credential === undefined) {
      return { ok: false, reason: 'not_a_device_credential', detail: 'password is not a device credential (JSON object with cert); observer logins are not enabled', serial }
    }
    const attempt: Attempt = { clientId: connect.clientId, serial, credential }
    for (const step of steps) {
      let result: StepResult
      try {
        result = await step.run(attempt)
      } catch (error) {
        return { ok: false, reason: 'server_unavailable', detail: `${step.name} check failed: ${(error as Error).message}`, serial }
      }
      if (result !== undefined) return { ok: false, ...result, serial }
    }
    return { ok: true, serial: attempt.serial!, certificate: attempt.certificate! }
  }

  return { authenticate, steps: steps.map(s => s.name) }
}

export type DeviceAuthenticator = ReturnType<typeof createDeviceAuthenticator>
