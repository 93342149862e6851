// Device payloads that must be one JSON object (info, replies, update_status).
import { unstorableJson } from './json-safety.js'

export const isObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === 'object' && value !== null && !Array.isArray(value)

/** The payload's object, or the reason it is not one (`what`: the message's name, for the device's errors topic). */
export function parseJsonObject (payload: Buffer, what: string): { ok: true, body: Record<string, unknown> } | { ok: false, reason: string } {
  let body: unknown
  try {
    body = JSON.parse(payload.toString('utf8'))
  } catch {
    return { ok: false, reason: `${what} is not valid JSON` }
  }
  if (!isObject(body)) return { ok: false, reason: `${what} must be a JSON object` }
  const unstorable = unstorableJson(body)
  return unstorable === undefined ? { ok: true, body } : { ok: false, reason: `${what}: ${unstorable.path} ${unstorable.reason}` }
}
