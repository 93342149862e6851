// GET /api/devices/:serial/metrics and the latest_metrics of GET /api/devices/:serial through the
// real server, on PGlite and PostgreSQL: filters, keyset paging (ties on recorded_at included),
// errors naming the field, unknown devices.
import { randomUUID } from 'node:crypto'
import t, { type Test } from 'tap'
import type { MetricPoint } from '../../src/metrics/types.js'
import { createMetricsRepository } from '../../src/storage/repos/metrics-repo.js'
import { DATABASES, startTestServer, type TestServer } from '../helpers/server.js'

const T0 = Date.parse('2026-12-01T12:00:00.000Z')
const at = (secondsBefore: number): Date => new Date(T0 - secondsBefore * 1000)

interface Item { name: string, value: number, unit: string | null, recorded_at: string, received_at: string }

async function allPages (t: Test, ts: TestServer, url: string): Promise<{ items: Item[], pages: number }> {
  const items: Item[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const response = await ts.api('GET', `${url}${url.includes('?') ? '&' : '?'}${cursor === null ? '' : `cursor=${cursor}`}`)
    t.equal(response.status, 200, `page ${pages + 1}`)
    items.push(...response.body.items as Item[])
    cursor = response.body.next_cursor
    pages += 1
  } while (cursor !== null && pages < 50)
  return { items, pages }
}

for (const database of DATABASES) {
  t.test(`device metrics API on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })
    const knex = ts.server.db.knex
    await knex('devices').insert([{ serial: 'm-1' }, { serial: 'm-2' }, { serial: 'm-quiet' }])
    const point = (serial: string, name: string, value: number, recordedAt: Date, unit: string | null = null): MetricPoint =>
      ({ serial, name, value, unit, recordedAt, receivedAt: new Date(T0) })
    const points: MetricPoint[] = [
      ...Array.from({ length: 150 }, (_, i) => point('m-1', 'cpu', i, at(i), '%')),
      ...Array.from({ length: 100 }, (_, i) => point('m-1', 'temp', 40 + i / 10, at(i + 0.5), 'C')),
      ...Array.from({ length: 5 }, (_, i) => point('m-1', 'tie', i, at(1000))), // same recorded_at: the id breaks the tie
      point('m-2', 'cpu', -1, at(0))
    ]
    await createMetricsRepository(knex).storeBatches([{ id: randomUUID(), points }])

    t.test('a token is required; an unknown device is 404', async (t) => {
      t.equal((await ts.api('GET', '/api/devices/m-1/metrics', { token: null })).status, 401)
      const missing = await ts.api('GET', '/api/devices/nobody/metrics')
      t.equal(missing.status, 404)
      t.equal(missing.body.error, 'not_found')
      const quiet = await ts.api('GET', '/api/devices/m-quiet/metrics')
      t.same(quiet.body, { items: [], next_cursor: null }, 'a known device without points')
    })

    t.test('every point of a device, newest first, over several pages', async (t) => {
      const first = await ts.api('GET', '/api/devices/m-1/metrics')
      t.equal(first.body.items.length, 100, 'default limit 100')
      t.same(first.body.items[0], { name: 'cpu', value: 0, unit: '%', recorded_at: at(0).toISOString(), received_at: new Date(T0).toISOString() })
      const { items, pages } = await allPages(t, ts, '/api/devices/m-1/metrics?limit=40')
      t.equal(pages, 7)
      t.equal(items.length, 255, 'every point once')
      t.notOk(items.some(item => item.value === -1), "another device's points stay out")
      const times = items.map(item => Date.parse(item.recorded_at))
      t.ok(times.every((time, i) => i === 0 || times[i - 1]! >= time), 'newest first')
      const ties = await allPages(t, ts, '/api/devices/m-1/metrics?name=tie&limit=2')
      t.same(ties.items.map(item => item.value).sort(), [0, 1, 2, 3, 4], 'points with the same recorded_at are paged through once each')
      t.equal(ties.pages, 3)
    })

    t.test('filters: name, since, until', async (t) => {
      const temp = await allPages(t, ts, '/api/devices/m-1/metrics?name=temp&limit=1000')
      t.equal(temp.items.length, 100)
      t.ok(temp.items.every(item => item.name === 'temp' && item.unit === 'C'))
      const window = await ts.api('GET', `/api/devices/m-1/metrics?name=cpu&since=${at(20).toISOString()}&until=${at(10).toISOString()}`)
      t.same(window.body.items.map((item: Item) => item.value), [10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 'both ends inclusive')
      const since = await ts.api('GET', `/api/devices/m-1/metrics?since=${encodeURIComponent('2026-12-01T13:59:58+02:00')}`)
      t.same(since.body.items.map((item: Item) => `${item.name}:${item.value}`), ['cpu:0', 'temp:40', 'cpu:1', 'temp:40.1', 'cpu:2'], 'ISO-8601 with an offset')
      t.same((await ts.api('GET', '/api/devices/m-1/metrics?name=nothing')).body, { items: [], next_cursor: null })
    })

    t.test('malformed parameters are 400 naming the field', async (t) => {
      for (const [query, field] of [
        ['since=yesterday', 'since'], ['until=2026-13-01T00:00:00Z', 'until'],
        [`since=${at(0).toISOString()}&until=${at(10).toISOString()}`, 'since'],
        ['limit=0', 'limit'], ['limit=1001', 'limit'], ['limit=ten', 'limit'],
        ['cursor=not-a-cursor', 'cursor'], [`cursor=${Buffer.from('1:x').toString('base64url')}`, 'cursor'],
        [`cursor=${Buffer.from('1:9999999999999999999').toString('base64url')}`, 'cursor'], [`cursor=${Buffer.from('-999999999999999999:1').toString('base64url')}`, 'cursor'],
        ['name=', 'name'], ['colour=red', 'colour']
      ] as const) {
        const response = await ts.api('GET', `/api/devices/m-1/metrics?${query}`)
        t.equal(response.status, 400, query)
        t.equal(response.body.error, 'invalid_request', query)
        t.equal(response.body.field, field, `${query} names ${field}`)
      }
      t.equal((await ts.api('GET', '/api/devices/m-1/metrics?limit=1000')).status, 200, 'limit 1000 is allowed')
    })

    t.test('GET /api/devices/:serial shows the latest value of each metric', async (t) => {
      const device = await ts.api('GET', '/api/devices/m-1')
      t.equal(device.status, 200)
      t.same(device.body.latest_metrics, {
        cpu: { value: 0, unit: '%', recorded_at: at(0).toISOString() },
        temp: { value: 40, unit: 'C', recorded_at: at(0.5).toISOString() },
        tie: { value: device.body.latest_metrics.tie.value, unit: null, recorded_at: at(1000).toISOString() }
      })
      t.same((await ts.api('GET', '/api/devices/m-quiet')).body.latest_metrics, {})
      const list = await ts.api('GET', '/api/devices')
      t.notOk(list.body.items.some((item: Record<string, unknown>) => 'latest_metrics' in item), 'not in the list')
    })

    t.test('extreme values and times are stored exactly', async (t) => {
      await knex('devices').insert({ serial: 'm-extreme' })
      const values = [Number.MAX_VALUE, -Number.MIN_VALUE, 1e21, -0.1, 2 ** 53 + 2]
      const times = [at(0), new Date(Date.parse('1970-01-01T00:00:00.001Z')), new Date(Date.parse('2026-12-01T11:59:59.999Z'))]
      await createMetricsRepository(knex).storeBatches([{
        id: randomUUID(),
        points: values.map((value, i) => point('m-extreme', `v${i}`, value, times[i % times.length]!, i === 0 ? 'quote" back\\slash, {brace}' : null))
      }])
      const { items } = await allPages(t, ts, '/api/devices/m-extreme/metrics')
      t.same(items.map(item => item.value).sort(), [...values].sort())
      t.same(new Set(items.map(item => item.recorded_at)), new Set(times.map(time => time.toISOString())), 'millisecond times')
      t.equal(items.find(item => item.name === 'v0')?.unit, 'quote" back\\slash, {brace}', 'text with array-literal syntax')
    })
  })
}
