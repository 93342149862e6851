// JSON that the database can store and the server can serialise: PostgreSQL's text and jsonb
// cannot hold U+0000 (the insert fails), and JSON.stringify overflows the stack on values nested
// a few thousand levels deep, which a 10 KB body can be. Checked where JSON comes in (REST bodies,
// device payloads), so such input is refused with a reason instead of failing later.

export const MAX_JSON_DEPTH = 32

export interface Unstorable { path: string, reason: string }

const NUL = '\u0000'
const NUL_REASON = 'contains a NUL character (\\u0000), which cannot be stored'

/** Why `value` cannot be stored, with the dotted path to the culprit ('' for the value itself); undefined when it can. */
export function unstorableJson (value: unknown, path = '', depth = 0): Unstorable | undefined {
  if (typeof value === 'string') return value.includes(NUL) ? { path, reason: NUL_REASON } : undefined
  if (typeof value !== 'object' || value === null) return undefined
  if (depth >= MAX_JSON_DEPTH) return { path, reason: `is nested more than ${MAX_JSON_DEPTH} levels deep` }
  const entries: Array<[string, unknown]> = Array.isArray(value) ? value.map((item, i) => [String(i), item]) : Object.entries(value)
  for (const [key, item] of entries) {
    const at = path === '' ? key : `${path}.${key}`
    if (key.includes(NUL)) return { path: at, reason: `has a key that ${NUL_REASON}` }
    const found = unstorableJson(item, at, depth + 1)
    if (found !== undefined) return found
  }
  return undefined
}

/** Whether a text (a query value, a cursor's key) can be stored. */
export const hasNul = (text: string): boolean => text.includes(NUL)
