// Password files made by `mosquitto_passwd` (MQTT_PASSWORD_FILE): one `user:hash` per line, the
// hash `$6$<salt>$<sha512(password ‖ salt)>` (mosquitto_passwd -H sha512) or
// `$7$<iterations>$<salt>$<PBKDF2-HMAC-SHA512(password, salt, iterations, 64 bytes)>` (the default
// of Mosquitto 2), salt and hash in base64. Lines that are empty or start with # are skipped; a
// line that cannot be used is reported with its number and left out.
import { createHash, pbkdf2, timingSafeEqual } from 'node:crypto'
import { promisify } from 'node:util'

const pbkdf2Async = promisify(pbkdf2)
const BASE64 = /^[A-Za-z0-9+/]+={0,2}$/
const MAX_ITERATIONS = 10_000_000

export type PasswdHash =
  | { kind: 'sha512', salt: Buffer, hash: Buffer }
  | { kind: 'pbkdf2-sha512', iterations: number, salt: Buffer, hash: Buffer }

export interface PasswordFile { users: Map<string, PasswdHash>, problems: string[] }

function parseHash (text: string): PasswdHash | string {
  const parts = text.split('$')
  const base64 = (value: string | undefined): Buffer | undefined => value !== undefined && BASE64.test(value) ? Buffer.from(value, 'base64') : undefined
  if (parts[0] !== '') return 'not a mosquitto_passwd hash (expected $6$… or $7$…; plain-text passwords are not accepted)'
  if (parts[1] === '6' && parts.length === 4) {
    const salt = base64(parts[2])
    const hash = base64(parts[3])
    if (salt === undefined || hash?.length !== 64) return 'a $6$ hash needs a base64 salt and a 64-byte base64 SHA-512'
    return { kind: 'sha512', salt, hash }
  }
  if (parts[1] === '7' && parts.length === 5) {
    const iterations = Number(parts[2])
    const salt = base64(parts[3])
    const hash = base64(parts[4])
    if (!Number.isInteger(iterations) || iterations < 1 || iterations > MAX_ITERATIONS) return `a $7$ hash needs an iteration count from 1 to ${MAX_ITERATIONS}`
    if (salt === undefined || hash?.length !== 64) return 'a $7$ hash needs a base64 salt and a 64-byte base64 PBKDF2-SHA512'
    return { kind: 'pbkdf2-sha512', iterations, salt, hash }
  }
  return `unsupported hash type $${parts[1] ?? ''}$ (mosquitto_passwd makes $6$ and $7$)`
}

export function parsePasswordFile (text: string): PasswordFile {
  const users = new Map<string, PasswdHash>()
  const problems: string[] = []
  for (const [index, raw] of text.split(/\r?\n/).entries()) {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) continue
    const colon = line.indexOf(':')
    if (colon <= 0) {
      problems.push(`line ${index + 1}: expected user:hash`)
      continue
    }
    const hash = parseHash(line.slice(colon + 1))
    if (typeof hash === 'string') problems.push(`line ${index + 1} (${line.slice(0, colon)}): ${hash}`)
    else users.set(line.slice(0, colon), hash)
  }
  return { users, problems }
}

export async function verifyPasswdHash (hash: PasswdHash, password: Buffer): Promise<boolean> {
  const derived = hash.kind === 'sha512'
    ? createHash('sha512').update(password).update(hash.salt).digest()
    : await pbkdf2Async(password, hash.salt, hash.iterations, 64, 'sha512')
  return timingSafeEqual(derived, hash.hash)
}
