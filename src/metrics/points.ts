// Validation of a device's `metrics` payload (contract §3): pure, no I/O. A payload that is not a
// JSON object with a `metrics` array is refused as a whole; otherwise every point is checked on its
// own, valid points go on and invalid ones are dropped with a reason from a closed set.
import type { MetricPoint } from './types.js'

/** Largest `metrics` payload accepted (bytes); bigger ones are refused without being parsed. */
export const MAX_PAYLOAD_BYTES = 64 * 1024
/** Most points in one message. */
export const MAX_POINTS_PER_MESSAGE = 1000
/** How far in the future `recorded_at` may be (device clocks drift). */
export const MAX_FUTURE_SECONDS = 60
export const MAX_NAME_LENGTH = 128
export const MAX_UNIT_LENGTH = 32

export const PAYLOAD_REJECTIONS = ['payload_too_large', 'not_json', 'not_an_object', 'no_metrics_array', 'too_many_points'] as const
export type PayloadRejection = typeof PAYLOAD_REJECTIONS[number]

export const POINT_REJECTIONS = ['not_an_object', 'invalid_name', 'invalid_value', 'invalid_unit', 'invalid_recorded_at', 'in_future', 'too_old'] as const
export type PointRejection = typeof POINT_REJECTIONS[number]

export interface RejectedPoint { index: number, reason: PointRejection, detail: string }

export type ParsedMetrics =
  | { ok: false, reason: PayloadRejection, detail: string }
  | { ok: true, points: MetricPoint[], rejected: RejectedPoint[] }

export interface ValidationOptions {
  now: Date
  /** METRICS_MAX_AGE */
  maxAgeSeconds: number
}

// Not printable: control characters (C0, DEL, C1), lone UTF-16 surrogates (no database text
// column takes them), format characters (zero-width spaces and joiners, bidirectional overrides)
// and line and paragraph separators.
const UNPRINTABLE = /[\p{Cc}\p{Cs}\p{Cf}\p{Zl}\p{Zp}]/u
const BLANK = /^\s*$/u
// Date and time with seconds optional, fraction optional, and a zone required (no local times).
const ISO_8601 = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?(?:Z|([+-])(\d{2}):?(\d{2}))$/i
const DAYS_IN_MONTH = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
/** The Gregorian calendar repeats every 400 years: 146,097 days. */
const GREGORIAN_CYCLE_MS = 146_097 * 86_400_000
const isLeapYear = (year: number): boolean => year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0)

function isText (value: unknown, maxLength: number, minLength: number): value is string {
  if (typeof value !== 'string' || UNPRINTABLE.test(value) || (minLength > 0 && BLANK.test(value))) return false
  // UTF-16 units ≥ code points: count the code points only when the units are over the limit
  const length = value.length <= maxLength ? value.length : [...value].length
  return length >= minLength && length <= maxLength
}

// The points of one message usually share their recorded_at: the last ISO-8601 text parsed is remembered.
let lastText: string | undefined
let lastTextMs: number | undefined

/** Unix milliseconds of a `recorded_at` (unix seconds or ISO-8601 with a zone), or undefined. */
export function parseRecordedAt (value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? value * 1000 : undefined
  if (typeof value !== 'string') return undefined
  if (value !== lastText) {
    lastTextMs = parseIso8601(value)
    lastText = value
  }
  return lastTextMs
}

function parseIso8601 (value: string): number | undefined {
  const match = ISO_8601.exec(value)
  if (match === null) return undefined
  const year = Number(match[1])
  const month = Number(match[2])
  const day = Number(match[3])
  const hour = Number(match[4])
  const minute = Number(match[5])
  const second = match[6] === undefined ? 0 : Number(match[6])
  const zoned = match[8] !== undefined
  const offsetHours = zoned ? Number(match[9]) : 0
  const offsetMinutes = zoned ? Number(match[10]) : 0
  // computed from the fields, not Date.parse: a date that does not exist (2025-02-30) is refused, not rolled over
  const daysInMonth = month === 2 && isLeapYear(year) ? 29 : DAYS_IN_MONTH[month - 1]
  if (daysInMonth === undefined || day < 1 || day > daysInMonth || hour > 23 || minute > 59 || second > 59) return undefined
  if (offsetHours > 23 || offsetMinutes > 59) return undefined
  const fraction = match[7]
  const millis = fraction === undefined ? 0 : fraction.length >= 3 ? Number(fraction.slice(0, 3)) : Number(fraction) * 10 ** (3 - fraction.length)
  // Date.UTC reads the years 0-99 as 1900-1999, so those go 400 years later and back
  const utc = year < 100 ? Date.UTC(year + 400, month - 1, day, hour, minute, second, millis) - GREGORIAN_CYCLE_MS : Date.UTC(year, month - 1, day, hour, minute, second, millis)
  return utc - (match[8] === '-' ? -1 : 1) * (offsetHours * 60 + offsetMinutes) * 60_000
}

/** Checks one point; answers the MetricPoint or why it is dropped. */
export function validatePoint (raw: unknown, serial: string, options: ValidationOptions): MetricPoint | { reason: PointRejection, detail: string } {
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { reason: 'not_an_object', detail: 'a point must be a JSON object' }
  const { name, value, unit, recorded_at: recordedAtRaw } = raw as Record<string, unknown>
  if (!isText(name, MAX_NAME_LENGTH, 1)) return { reason: 'invalid_name', detail: `name must be a string of 1-${MAX_NAME_LENGTH} printable characters` }
  if (typeof value !== 'number' || !Number.isFinite(value)) return { reason: 'invalid_value', detail: 'value must be a finite number' }
  if (unit !== undefined && unit !== null && !isText(unit, MAX_UNIT_LENGTH, 0)) {
    return { reason: 'invalid_unit', detail: `unit must be a string of at most ${MAX_UNIT_LENGTH} printable characters` }
  }
  const recordedAt = parseRecordedAt(recordedAtRaw)
  if (recordedAt === undefined) return { reason: 'invalid_recorded_at', detail: 'recorded_at must be unix seconds or an ISO-8601 time with a zone' }
  const now = options.now.getTime()
  if (recordedAt > now + MAX_FUTURE_SECONDS * 1000) return { reason: 'in_future', detail: `recorded_at is more than ${MAX_FUTURE_SECONDS} s in the future` }
  if (recordedAt < now - options.maxAgeSeconds * 1000) return { reason: 'too_old', detail: `recorded_at is more than ${options.maxAgeSeconds} s old (METRICS_MAX_AGE)` }
  return { serial, name, value, unit: typeof unit === 'string' && unit !== '' ? unit : null, recordedAt: new Date(recordedAt), receivedAt: options.now }
}

/** Parses and checks a `metrics` payload of device `serial`. */
export function parseMetricsPayload (payload: Buffer | string, serial: string, options: ValidationOptions): ParsedMetrics {
  const bytes = typeof payload === 'string' ? Buffer.byteLength(payload) : payload.length
  if (bytes > MAX_PAYLOAD_BYTES) return { ok: false, reason: 'payload_too_large', detail: `the payload is ${bytes} bytes, more than ${MAX_PAYLOAD_BYTES}` }
  let body: unknown
  try {
    body = JSON.parse(payload.toString())
  } catch {
    return { ok: false, reason: 'not_json', detail: 'the payload is not JSON' }
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) return { ok: false, reason: 'not_an_object', detail: 'the payload must be a JSON object {"metrics": [...]}' }
  const list = (body as { metrics?: unknown }).metrics
  if (!Array.isArray(list)) return { ok: false, reason: 'no_metrics_array', detail: 'the payload has no "metrics" array' }
  if (list.length > MAX_POINTS_PER_MESSAGE) return { ok: false, reason: 'too_many_points', detail: `${list.length} points, more than ${MAX_POINTS_PER_MESSAGE} in one message` }
  const points: MetricPoint[] = []
  const rejected: RejectedPoint[] = []
  list.forEach((raw, index) => {
    const checked = validatePoint(raw, serial, options)
    if ('reason' in checked) rejected.push({ index, ...checked })
    else points.push(checked)
  })
  return { ok: true, points, rejected }
}

const REPORTED_POINTS = 10

/** The `reason` text of an errors-topic report for a parsed payload, or undefined when all was valid. */
export function describeRejection (parsed: ParsedMetrics): string | undefined {
  if (!parsed.ok) return `${parsed.reason}: ${parsed.detail}; no point was accepted`
  const { rejected, points } = parsed
  if (rejected.length === 0) return undefined
  const listed = rejected.slice(0, REPORTED_POINTS).map(r => `metrics[${r.index}] ${r.reason}: ${r.detail}`)
  if (rejected.length > REPORTED_POINTS) listed.push(`and ${rejected.length - REPORTED_POINTS} more`)
  return `${rejected.length} of ${rejected.length + points.length} points dropped: ${listed.join('; ')}`
}
