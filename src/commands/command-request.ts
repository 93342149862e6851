// The rules for a command request (contract §3/§4): a known command, its payload's shape, and a
// time to live. Each refusal names the request field at fault.
import { isObject, parseJsonObject } from '../json-payload.js'
import { COMMAND_NAMES, type CommandName } from './types.js'

export const DEFAULT_TTL_SECONDS = 86_400
export const MAX_TTL_SECONDS = 30 * 86_400
export const MAX_PAYLOAD_BYTES = 16 * 1024

export interface CommandRequest { command: string, payload?: unknown, ttl_seconds?: number }

export type CheckedRequest =
  | { ok: true, command: CommandName, payload: Record<string, unknown>, ttlSeconds: number }
  | { ok: false, field: string, message: string }

type PayloadRule = (payload: Record<string, unknown>) => { field: string, message: string } | undefined

/** Allows only `keys`, each checked by its rule (a message when it is wrong). */
function fields (rules: Record<string, { required?: boolean, check: (value: unknown) => string | undefined }>): PayloadRule {
  return (payload) => {
    for (const key of Object.keys(payload)) {
      if (!Object.hasOwn(rules, key)) return { field: `payload.${key}`, message: `payload.${key} is not a known field (expected ${Object.keys(rules).join(', ') || 'none'})` }
    }
    for (const [key, rule] of Object.entries(rules)) {
      if (!Object.hasOwn(payload, key)) {
        if (rule.required === true) return { field: `payload.${key}`, message: `payload.${key} is required` }
        continue
      }
      const problem = rule.check(payload[key])
      if (problem !== undefined) return { field: `payload.${key}`, message: `payload.${key} ${problem}` }
    }
    return undefined
  }
}

const integer = (min: number, max: number) => (value: unknown) =>
  Number.isInteger(value) && (value as number) >= min && (value as number) <= max ? undefined : `must be an integer from ${min} to ${max}`
const text = (max: number) => (value: unknown) =>
  typeof value === 'string' && value.length >= 1 && value.length <= max ? undefined : `must be a string of 1–${max} characters`
const httpUrl = (value: unknown) => {
  if (typeof value !== 'string') return 'must be an absolute http(s) URL'
  try {
    return ['http:', 'https:'].includes(new URL(value).protocol) ? undefined : 'must be an absolute http(s) URL'
  } catch {
    return 'must be an absolute http(s) URL'
  }
}

const PAYLOADS: Record<CommandName, PayloadRule> = {
  reboot: fields({}),
  identify: fields({ duration_seconds: { check: integer(1, 3600) } }),
  ping: fields({ echo: { check: () => undefined } }),
  // contract §3; the firmware feature builds it, operators may send it by hand
  update: fields({
    update_id: { required: true, check: text(64) },
    firmware_id: { required: true, check: value => typeof value === 'number' ? integer(1, Number.MAX_SAFE_INTEGER)(value) : text(64)(value) },
    version: { required: true, check: text(64) },
    target: { required: true, check: text(64) },
    url: { required: true, check: httpUrl },
    sha256: { required: true, check: value => typeof value === 'string' && /^[0-9a-f]{64}$/.test(value) ? undefined : 'must be 64 lowercase hex digits' },
    size: { required: true, check: integer(0, Number.MAX_SAFE_INTEGER) },
    reboot: { required: true, check: value => typeof value === 'boolean' ? undefined : 'must be a boolean' }
  })
}

export function checkCommandRequest (request: CommandRequest): CheckedRequest {
  const { command } = request
  if (!(COMMAND_NAMES as readonly string[]).includes(command)) {
    return { ok: false, field: 'command', message: `command must be one of ${COMMAND_NAMES.join(', ')}` }
  }
  const payload = request.payload ?? {}
  if (!isObject(payload)) return { ok: false, field: 'payload', message: 'payload must be an object' }
  if (Buffer.byteLength(JSON.stringify(payload)) > MAX_PAYLOAD_BYTES) {
    return { ok: false, field: 'payload', message: `payload must be at most ${MAX_PAYLOAD_BYTES} bytes of JSON` }
  }
  const problem = PAYLOADS[command as CommandName](payload)
  if (problem !== undefined) return { ok: false, ...problem }
  const ttl = request.ttl_seconds ?? DEFAULT_TTL_SECONDS
  if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TTL_SECONDS) {
    return { ok: false, field: 'ttl_seconds', message: `ttl_seconds must be an integer from 1 to ${MAX_TTL_SECONDS}` }
  }
  return { ok: true, command: command as CommandName, payload, ttlSeconds: ttl }
}

/** The same request again (an idempotent retry), as opposed to a different one under a reused key. */
export function sameRequest (a: { command: string, payload: unknown, ttlMs: number }, b: { command: string, payload: unknown, ttlMs: number }): boolean {
  return a.command === b.command && a.ttlMs === b.ttlMs && canonical(a.payload) === canonical(b.payload)
}

function canonical (value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (isObject(value)) return `{${Object.keys(value).sort().map(key => `${JSON.stringify(key)}:${canonical(value[key])}`).join(',')}}`
  return JSON.stringify(value) ?? 'null'
}

/** A device's reply (contract §3): `{id, status, result?, error?}`. */
export function parseReply (payload: Buffer): { ok: true, id: string, state: 'ok' | 'error', result: unknown, error: string | null } | { ok: false, reason: string } {
  const parsed = parseJsonObject(payload, 'a reply')
  if (!parsed.ok) return parsed
  const { id, status, result, error } = parsed.body
  if (typeof id !== 'string' || !/^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i.test(id)) return { ok: false, reason: 'id must be a command id (uuid)' }
  if (status !== 'ok' && status !== 'error') return { ok: false, reason: `status must be "ok" or "error" (command ${id})` }
  if (error !== undefined && error !== null && typeof error !== 'string') return { ok: false, reason: `error must be a string (command ${id})` }
  return { ok: true, id: id.toLowerCase(), state: status, result: result ?? null, error: typeof error === 'string' ? error.slice(0, 4096) : null }
}
