// Operator API tokens: made here, shown once, stored only as a SHA-256 hash. A request's bearer
// token is hashed and looked up; names are how operators list and revoke them.
import { createHash, randomBytes } from 'node:crypto'

export interface ApiTokenRecord {
  name: string
  inserted_at: Date
  last_used_at: Date | null
}

export interface ApiTokenRepository {
  /** Answers false when the name is taken. */
  insert (name: string, tokenHash: string): Promise<boolean>
  /** Finds the token by hash and records that it was used. */
  use (tokenHash: string, at: Date): Promise<ApiTokenRecord | undefined>
  list (): Promise<ApiTokenRecord[]>
  /** Answers false when no token has this name. */
  remove (name: string): Promise<boolean>
}

export type CreateTokenResult = { ok: true, token: string } | { ok: false, reason: 'name_taken' | 'invalid_name' }

const TOKEN_PREFIX = 'shp_'
const NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/

export function isValidTokenName (name: string): boolean {
  return NAME_PATTERN.test(name)
}

function hashToken (token: string): string {
  return createHash('sha256').update(token).digest('hex')
}

export function createApiTokens (repo: ApiTokenRepository) {
  return {
    async create (name: string): Promise<CreateTokenResult> {
      if (!isValidTokenName(name)) return { ok: false, reason: 'invalid_name' }
      const token = TOKEN_PREFIX + randomBytes(32).toString('base64url')
      return await repo.insert(name, hashToken(token)) ? { ok: true, token } : { ok: false, reason: 'name_taken' }
    },

    /** The token's record, or undefined when the token is unknown (or revoked). */
    async verify (token: string): Promise<ApiTokenRecord | undefined> {
      if (!token.startsWith(TOKEN_PREFIX) || token.length > 128) return undefined
      return await repo.use(hashToken(token), new Date())
    },

    list: () => repo.list(),
    revoke: (name: string) => repo.remove(name)
  }
}

export type ApiTokens = ReturnType<typeof createApiTokens>
