// src/metrics/points.ts: every rule of a metrics payload and of a point, without a server.
import t from 'tap'
import {
  MAX_PAYLOAD_BYTES, MAX_POINTS_PER_MESSAGE, describeRejection, parseMetricsPayload, parseRecordedAt, validatePoint
} from '../../src/metrics/points.js'

const now = new Date('2026-06-01T12:00:00.000Z')
const nowS = now.getTime() / 1000
const options = { now, maxAgeSeconds: 604_800 }
const point = (fields: Record<string, unknown>): Record<string, unknown> => ({ name: 'cpu', value: 1, recorded_at: nowS, ...fields })
const reasonOf = (raw: unknown): string | undefined => {
  const checked = validatePoint(raw, 'dev-1', options)
  return 'reason' in checked ? checked.reason : undefined
}

t.test('a valid point becomes a MetricPoint', async (t) => {
  t.same(validatePoint({ name: 'cpu_percent', value: 12.5, unit: '%', recorded_at: nowS - 10 }, 'dev-1', options), {
    serial: 'dev-1', name: 'cpu_percent', value: 12.5, unit: '%', recordedAt: new Date(now.getTime() - 10_000), receivedAt: now
  })
  t.equal((validatePoint(point({ unit: undefined }), 'd', options) as { unit: unknown }).unit, null, 'no unit → null')
  t.equal((validatePoint(point({ unit: null }), 'd', options) as { unit: unknown }).unit, null, 'unit null → null')
  t.equal((validatePoint(point({ unit: '' }), 'd', options) as { unit: unknown }).unit, null, 'unit "" → null')
  t.equal(reasonOf(point({ value: -0.5 })), undefined, 'negative and fractional values')
  t.equal(reasonOf(point({ value: 0 })), undefined, 'zero')
  t.equal(reasonOf(point({ extra: 'ignored' })), undefined, 'other keys are ignored')
})

t.test('a point must be an object', async (t) => {
  for (const raw of [null, 1, 'x', [], true]) t.equal(reasonOf(raw), 'not_an_object', JSON.stringify(raw))
})

t.test('name: 1-128 printable characters', async (t) => {
  t.equal(reasonOf(point({ name: undefined })), 'invalid_name', 'missing')
  t.equal(reasonOf(point({ name: 5 })), 'invalid_name', 'not a string')
  t.equal(reasonOf(point({ name: '' })), 'invalid_name', 'empty')
  t.equal(reasonOf(point({ name: 'a'.repeat(128) })), undefined, '128 characters')
  t.equal(reasonOf(point({ name: 'a'.repeat(129) })), 'invalid_name', '129 characters')
  t.equal(reasonOf(point({ name: 'é'.repeat(128) })), undefined, 'characters, not bytes')
  t.equal(reasonOf(point({ name: '😀'.repeat(128) })), undefined, 'code points, not UTF-16 units')
  t.equal(reasonOf(point({ name: 'temp °C / sensor #1' })), undefined, 'spaces and punctuation are printable')
  for (const control of ['\u0000', '\n', '\t', '\u001b', '\u007f', '\u0085']) {
    t.equal(reasonOf(point({ name: `a${control}b` })), 'invalid_name', `control character U+${control.charCodeAt(0).toString(16).padStart(4, '0')}`)
  }
  t.equal(reasonOf(point({ name: 'a\ud800b' })), 'invalid_name', 'a lone surrogate')
  for (const invisible of ['\u200b', 'a\u202eb', 'a\u2028b', 'a\u2029b', '\ufeffname']) {
    t.equal(reasonOf(point({ name: invisible })), 'invalid_name', `format character or separator U+${[...invisible].find(c => !/[a-z]/.test(c))!.codePointAt(0)!.toString(16).padStart(4, '0')}`)
  }
  t.equal(reasonOf(point({ name: '   ' })), 'invalid_name', 'only spaces')
  t.equal(reasonOf(point({ name: ' a ' })), undefined, 'spaces around a name are kept')
})

t.test('value: a finite number', async (t) => {
  for (const value of ['1', null, undefined, true, {}, Number.NaN, Infinity, -Infinity]) {
    t.equal(reasonOf(point({ value })), 'invalid_value', String(value))
  }
})

t.test('unit: optional, at most 32 printable characters', async (t) => {
  t.equal(reasonOf(point({ unit: 'x'.repeat(32) })), undefined, '32 characters')
  t.equal(reasonOf(point({ unit: 'x'.repeat(33) })), 'invalid_unit', '33 characters')
  t.equal(reasonOf(point({ unit: 5 })), 'invalid_unit', 'not a string')
  t.equal(reasonOf(point({ unit: '%\n' })), 'invalid_unit', 'a control character')
})

t.test('recorded_at: unix seconds or ISO-8601 with a zone', async (t) => {
  t.equal(parseRecordedAt(1_780_000_000), 1_780_000_000_000, 'integer seconds')
  t.equal(parseRecordedAt(1_780_000_000.25), 1_780_000_000_250, 'fractional seconds')
  t.equal(parseRecordedAt('2026-06-01T12:00:00Z'), now.getTime(), 'Z')
  t.equal(parseRecordedAt('2026-06-01T14:00:00.000+02:00'), now.getTime(), 'offset with milliseconds')
  t.equal(parseRecordedAt('2026-06-01T14:00+0200'), now.getTime(), 'no seconds, compact offset')
  t.equal(parseRecordedAt('2026-06-01T12:00:00,5Z'), now.getTime() + 500, 'comma fraction')
  t.equal(parseRecordedAt('2026-06-01t12:00:00.123987z'), now.getTime() + 123, 'microseconds cut to milliseconds, lower-case T and Z')
  t.equal(parseRecordedAt('2026-06-01T01:30:00-10:30'), now.getTime(), 'negative offset with minutes')
  t.equal(parseRecordedAt('0050-03-01T00:00:00Z'), Date.parse('0050-03-01T00:00:00Z'), 'a year below 100 is that year, not 1950')
  for (const bad of ['2026-06-01T12:00:00', '2026-06-01', 'June 1 2026', '2026-02-30T00:00:00Z', '2026-13-01T00:00:00Z',
    '2026-06-01T24:00:00Z', '2026-06-01T12:60:00Z', '2026-06-01T12:00:60Z', '2026-06-01T12:00:00+24:00', '2026-06-01T12:00:00+01:60',
    '1900-02-29T00:00:00Z', '2026-04-31T00:00:00Z', '2026-00-10T00:00:00Z', '2026-06-00T00:00:00Z', '', '1780000000', null, undefined, Number.NaN, Infinity, {}]) {
    t.equal(parseRecordedAt(bad), undefined, `refused: ${String(bad)}`)
    t.equal(reasonOf(point({ recorded_at: bad })), 'invalid_recorded_at', `point refused: ${String(bad)}`)
  }
  t.equal(parseRecordedAt('2024-02-29T00:00:00Z'), Date.UTC(2024, 1, 29), 'a leap day')
})

t.test('recorded_at: at most 60 s ahead, at most METRICS_MAX_AGE old', async (t) => {
  t.equal(reasonOf(point({ recorded_at: nowS + 60 })), undefined, '60 s ahead')
  t.equal(reasonOf(point({ recorded_at: nowS + 61 })), 'in_future', '61 s ahead')
  t.equal(reasonOf(point({ recorded_at: (now.getTime() + 120_000) / 1000 * 1000 })), 'in_future', 'milliseconds by mistake')
  t.equal(reasonOf(point({ recorded_at: nowS - 604_800 })), undefined, 'exactly the max age')
  t.equal(reasonOf(point({ recorded_at: nowS - 604_801 })), 'too_old', 'one second older')
  t.equal(reasonOf(point({ recorded_at: '2026-05-25T11:59:59Z' })), 'too_old', 'an ISO time too old')
  const short = validatePoint(point({ recorded_at: nowS - 61 }), 'd', { now, maxAgeSeconds: 60 })
  t.match(short, { reason: 'too_old', detail: /60 s.*METRICS_MAX_AGE/ }, 'the max age is a setting')
})

t.test('payloads', async (t) => {
  const parse = (payload: string | Buffer): ReturnType<typeof parseMetricsPayload> => parseMetricsPayload(payload, 'dev-1', options)
  t.match(parse('not json'), { ok: false, reason: 'not_json' })
  t.match(parse(Buffer.from([0xff, 0xfe])), { ok: false, reason: 'not_json' })
  t.match(parse(''), { ok: false, reason: 'not_json' })
  for (const body of ['[]', '1', 'null', '"x"']) t.match(parse(body), { ok: false, reason: 'not_an_object' }, body)
  for (const body of ['{}', '{"metrics":{}}', '{"metrics":"x"}', '{"points":[]}']) t.match(parse(body), { ok: false, reason: 'no_metrics_array' }, body)
  t.match(parse('{"metrics":[]}'), { ok: true, points: [], rejected: [] }, 'an empty list is fine')

  const big = JSON.stringify({ metrics: [point({ name: 'x'.repeat(100), unit: 'y'.repeat(MAX_PAYLOAD_BYTES) })] })
  t.match(parse(big), { ok: false, reason: 'payload_too_large' }, `over ${MAX_PAYLOAD_BYTES} bytes, without parsing`)
  const many = JSON.stringify({ metrics: Array.from({ length: MAX_POINTS_PER_MESSAGE + 1 }, () => ({ name: 'a', value: 1, recorded_at: nowS })) })
  t.match(parse(many), { ok: false, reason: 'too_many_points' }, `more than ${MAX_POINTS_PER_MESSAGE} points`)
  const most = JSON.stringify({ metrics: Array.from({ length: MAX_POINTS_PER_MESSAGE }, () => ({ name: 'a', value: 1, recorded_at: nowS })) })
  t.equal((parse(most) as { points: unknown[] }).points.length, MAX_POINTS_PER_MESSAGE, `${MAX_POINTS_PER_MESSAGE} points`)

  const mixed = parse(JSON.stringify({ metrics: [point({}), point({ value: 'x' }), point({ name: 'b' }), 7, point({ recorded_at: nowS + 3600 })] }))
  t.match(mixed, {
    ok: true,
    points: [{ name: 'cpu' }, { name: 'b' }],
    rejected: [{ index: 1, reason: 'invalid_value' }, { index: 3, reason: 'not_an_object' }, { index: 4, reason: 'in_future' }]
  }, 'valid points go on, invalid ones are listed by index')
})

t.test('the errors-topic text says which point and why', async (t) => {
  const parse = (metrics: unknown[]): ReturnType<typeof parseMetricsPayload> => parseMetricsPayload(JSON.stringify({ metrics }), 'd', options)
  t.equal(describeRejection(parse([point({})])), undefined, 'nothing to report')
  t.equal(describeRejection(parse([point({}), point({ value: null })])),
    '1 of 2 points dropped: metrics[1] invalid_value: value must be a finite number')
  t.equal(describeRejection(parseMetricsPayload('{', 'd', options)), 'not_json: the payload is not JSON; no point was accepted')
  const text = describeRejection(parse(Array.from({ length: 15 }, () => point({ name: '' }))))!
  t.match(text, /^15 of 15 points dropped: metrics\[0\] invalid_name/)
  t.match(text, /metrics\[9\] invalid_name: [^;]*; and 5 more$/, 'at most 10 points listed')
})
