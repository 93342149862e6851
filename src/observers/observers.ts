// Observer accounts: read-only MQTT logins for third-party tools (mosquitto_sub, MQTT Explorer,
// Node-RED, bridges). Made here with a generated password that is shown once and stored as a
// scrypt hash; the users of a mosquitto_passwd file (MQTT_PASSWORD_FILE) log in as observers too.
// Knows nothing of MQTT or knex.
import { randomBytes, scrypt, timingSafeEqual, type ScryptOptions } from 'node:crypto'
import { verifyPasswdHash, type PasswdHash, type PasswordFile } from './passwd-file.js'

export interface ObserverRecord { name: string, inserted_at: Date }

export interface ObserverRepository {
  /** Answers false when the name is taken. */
  insert (name: string, passwordHash: string): Promise<boolean>
  passwordHash (name: string): Promise<string | undefined>
  list (): Promise<ObserverRecord[]>
  /** Answers false when there is no such observer. */
  remove (name: string): Promise<boolean>
}

export type AddObserverResult = { ok: true, password: string } | { ok: false, reason: 'name_taken' | 'invalid_name' }

/** What admitted an observer's login: an account made here or a user of the password file, by the hash it was checked against. */
export interface ObserverGrant { source: 'account' | 'file', hash: string }

const fileHashOf = (hash: PasswdHash): string => `${hash.kind}$${'iterations' in hash ? hash.iterations : ''}$${hash.salt.toString('base64')}$${hash.hash.toString('base64')}`

const NAME = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/
const SCRYPT = { N: 16_384, r: 8, p: 1 }
const KEY_BYTES = 32

function derive (password: Buffer | string, salt: Buffer, options: ScryptOptions): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    scrypt(password, salt, KEY_BYTES, options, (error, key) => { if (error === null) resolve(key); else reject(error) })
  })
}

async function hashPassword (password: string): Promise<string> {
  const salt = randomBytes(16)
  const key = await derive(password, salt, SCRYPT)
  return `scrypt$${SCRYPT.N}$${SCRYPT.r}$${SCRYPT.p}$${salt.toString('base64')}$${key.toString('base64')}`
}

async function verifyPassword (stored: string, password: Buffer): Promise<boolean> {
  const [kind, n, r, p, salt, key] = stored.split('$')
  if (kind !== 'scrypt' || key === undefined) return false
  const expected = Buffer.from(key, 'base64')
  const derived = await derive(password, Buffer.from(salt!, 'base64'), { N: Number(n), r: Number(r), p: Number(p) })
  return timingSafeEqual(derived, expected)
}

export function isValidObserverName (name: string): boolean {
  return NAME.test(name)
}

export function createObservers (deps: { repo: ObserverRepository, passwordFile?: () => PasswordFile | undefined }) {
  const { repo } = deps
  // compared against when the name is unknown, so that a wrong name costs what a wrong password does
  let unknownName: Promise<string> | undefined
  return {
    async add (name: string): Promise<AddObserverResult> {
      if (!isValidObserverName(name)) return { ok: false, reason: 'invalid_name' }
      const password = randomBytes(18).toString('base64url')
      return await repo.insert(name, await hashPassword(password)) ? { ok: true, password } : { ok: false, reason: 'name_taken' }
    },

    /**
     * Admits an observer's login: an account made here decides for its name, else a user of the
     * password file of that name. Undefined for a wrong name or password.
     */
    async verify (name: string, password: Buffer): Promise<ObserverGrant | undefined> {
      const stored = await repo.passwordHash(name)
      if (stored !== undefined) return await verifyPassword(stored, password) ? { source: 'account', hash: stored } : undefined
      const fromFile = deps.passwordFile?.()?.users.get(name)
      if (fromFile !== undefined) return await verifyPasswdHash(fromFile, password) ? { source: 'file', hash: fileHashOf(fromFile) } : undefined
      await verifyPassword(await (unknownName ??= hashPassword(randomBytes(18).toString('base64url'))), password)
      return undefined
    },

    /** Whether what admitted a login still would: the account or file user is there, with the same password. */
    async stillValid (name: string, grant: ObserverGrant): Promise<boolean> {
      const stored = await repo.passwordHash(name)
      if (grant.source === 'account') return stored === grant.hash
      const fromFile = deps.passwordFile?.()?.users.get(name)
      return stored === undefined && fromFile !== undefined && fileHashOf(fromFile) === grant.hash
    },

    list: () => repo.list(),
    remove: (name: string) => repo.remove(name)
  }
}

export type Observers = ReturnType<typeof createObservers>
