// /api/devices through the real server: tokens, filters and cursor paging, one device's fields,
// PATCH validation, revoke/unrevoke kicking and re-admitting a live device, DELETE — on PGlite
// and on PostgreSQL, with real MQTT devices where presence matters.
import t, { type Test } from 'tap'
import { connectDevice, devicePassword } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { DATABASES, eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { connackCode } from '../helpers/connect.js'
import { retainedJson, retainedPayload } from '../helpers/retained.js'

async function insertDevices (ts: TestServer, rows: Array<Record<string, unknown>>): Promise<void> {
  await ts.server.db.knex('devices').insert(rows)
}

async function insertGroup (ts: TestServer, name: string): Promise<number> {
  const [group] = await ts.server.db.knex('groups').insert({ name }).returning('id') as Array<{ id: string }>
  return Number(group!.id)
}

/** Every serial the list answers for `query`, following next_cursor page by page. */
async function listAll (t: Test, ts: TestServer, query: string, limit: number): Promise<{ serials: string[], pages: number }> {
  const serials: string[] = []
  let cursor: string | null = null
  let pages = 0
  do {
    const response = await ts.api('GET', `/api/devices?${query}&limit=${limit}${cursor === null ? '' : `&cursor=${cursor}`}`)
    t.equal(response.status, 200, `page ${pages + 1} answered`)
    t.ok(response.body.items.length <= limit, 'a page holds at most limit items')
    serials.push(...response.body.items.map((device: { serial: string }) => device.serial))
    cursor = response.body.next_cursor
    pages += 1
  } while (cursor !== null && pages < 100)
  return { serials, pages }
}

for (const database of DATABASES) {
  t.test(`devices API on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })

    t.test('every route needs a valid token', async (t) => {
      for (const [method, url] of [['GET', '/api/devices'], ['GET', '/api/devices/x'], ['PATCH', '/api/devices/x'], ['DELETE', '/api/devices/x'], ['POST', '/api/devices/x/revoke']] as const) {
        const missing = await ts.api(method, url, { token: null })
        t.equal(missing.status, 401, `${method} ${url} without a token`)
        t.equal(missing.body.error, 'unauthorized')
        const wrong = await ts.api(method, url, { token: 'shp_not-a-real-token' })
        t.equal(wrong.status, 401, `${method} ${url} with an unknown token`)
      }
      t.equal((await ts.api('GET', '/api/devices', { headers: { authorization: `Basic ${ts.apiToken}` }, token: null })).status, 401, 'only Bearer is accepted')
      t.equal((await ts.api('GET', '/api/health', { token: null })).status, 200, 'health is public')

      const created = await ts.server.tokens.create('short-lived')
      if (!created.ok) throw new Error('token not created')
      t.equal((await ts.api('GET', '/api/devices', { token: created.token })).status, 200)
      t.ok(await ts.server.tokens.revoke('short-lived'))
      t.equal((await ts.api('GET', '/api/devices', { token: created.token })).status, 401, 'a revoked token is refused')
      t.notOk(ts.logs.some(line => JSON.stringify(line).includes(created.token)), 'the token never reaches the log')
    })

    t.test('filters and cursor paging over more devices than one page', async (t) => {
      const prefix = uniqueSerial('page')
      const groupId = await insertGroup(ts, `g-${prefix}`)
      const rows = Array.from({ length: 23 }, (_, i) => ({
        serial: `${prefix}-${String(i).padStart(2, '0')}`,
        nickname: i % 5 === 0 ? `Kitchen 100%_${i}` : null,
        firmware_version: i % 2 === 0 ? '1.0.0' : '1.1.0',
        revoked: i % 7 === 0,
        status: i < 3 ? 'online' : 'offline',
        group_id: i % 3 === 0 ? groupId : null
      }))
      await insertDevices(ts, rows)
      const expected = (keep: (row: typeof rows[number]) => boolean): string[] => rows.filter(keep).map(row => row.serial)

      const all = await listAll(t, ts, `q=${prefix}`, 5)
      t.same(all.serials, expected(() => true), 'every device exactly once, ordered by serial')
      t.equal(all.pages, 5, '23 devices in pages of 5')
      t.same((await listAll(t, ts, `q=${prefix}&firmware_version=1.1.0`, 4)).serials, expected(row => row.firmware_version === '1.1.0'))
      t.same((await listAll(t, ts, `q=${prefix}&revoked=true`, 2)).serials, expected(row => row.revoked))
      t.same((await listAll(t, ts, `q=${prefix}&revoked=false&status=offline`, 6)).serials, expected(row => !row.revoked && row.status === 'offline'))
      t.same((await listAll(t, ts, `group_id=${groupId}`, 3)).serials, expected(row => row.group_id !== null))
      t.same((await listAll(t, ts, `q=${encodeURIComponent('KITCHEN 100%_')}`, 50)).serials, expected(row => row.nickname !== null),
        'q matches the nickname case-insensitively, with % and _ taken literally')

      for (const [query, field] of [['status=sleeping', 'status'], ['limit=501', 'limit'], ['limit=0', 'limit'], ['group_id=abc', 'group_id'],
        ['revoked=maybe', 'revoked'], ['cursor=bm90LWEtc2VyaWFs!', 'cursor'], ['colour=red', 'colour']] as const) {
        const response = await ts.api('GET', `/api/devices?${query}`)
        t.equal(response.status, 400, query)
        t.match(response.body, { error: 'invalid_request', field, message: String }, `${query} names ${field}`)
      }
    })

    t.test('one device: the registry fields, as a live device sees them', async (t) => {
      const serial = uniqueSerial('one')
      const identity = await ts.pki.device(serial)
      const device = await connectDevice({ url: ts.wsUrl, identity, info: { firmware_version: '2.0.1', firmware_target: 'rpi4', site: 'lab' } })
      t.teardown(() => device.close())
      const body = await eventually(async () => {
        const response = await ts.api('GET', `/api/devices/${serial}`)
        return response.status === 200 && response.body.status === 'online' && response.body.firmware_version === '2.0.1' && response.body
      }, 5000, 'the device online with its info')
      t.match(body, {
        serial, nickname: null, status: 'online', revoked: false, disconnect_reason: null, group_id: null,
        firmware_version: '2.0.1', firmware_target: 'rpi4', metadata: { site: 'lab' },
        cert_fingerprint: /^[0-9a-f]{64}$/, cert_not_after: /^\d{4}-\d{2}-\d{2}T/, connected_at: /Z$/, last_seen_at: /Z$/, node_id: ts.server.nodeId
      })
      t.notOk('id' in body || 'connection_id' in body, 'internal keys stay inside')
      t.equal((await ts.api('GET', '/api/devices/no-such-device')).status, 404)
      t.equal((await ts.api('GET', '/api/devices/bad%20serial')).body.field, 'serial', 'a malformed serial is a 400 naming it')

      await device.close()
      const offline = await eventually(async () => {
        const response = await ts.api('GET', `/api/devices/${serial}`)
        return response.body.status === 'offline' && response.body
      }, 5000, 'the device offline')
      t.match(offline, { disconnect_reason: 'clean', node_id: null, disconnected_at: /Z$/ })
    })

    t.test('PATCH changes nickname, group and metadata, and names the field it refuses', async (t) => {
      const serial = uniqueSerial('patch')
      await insertDevices(ts, [{ serial, metadata: JSON.stringify({ site: 'lab', rack: 4 }) }])
      const groupId = await insertGroup(ts, `g-${serial}`)

      const patched = await ts.api('PATCH', `/api/devices/${serial}`, { body: { nickname: 'Porch', group_id: groupId, metadata: { rack: null, owner: 'ops' } } })
      t.equal(patched.status, 200)
      t.match(patched.body, { serial, nickname: 'Porch', group_id: groupId })
      t.same(patched.body.metadata, { site: 'lab', owner: 'ops' }, 'metadata merged; a null removes the key')
      t.same((await ts.api('GET', `/api/devices/${serial}`)).body.metadata, { site: 'lab', owner: 'ops' }, 'and stored')

      const cleared = await ts.api('PATCH', `/api/devices/${serial}`, { body: { nickname: null, group_id: null } })
      t.match(cleared.body, { nickname: null, group_id: null })

      for (const [body, field] of [
        [{ nickname: { first: 'x' } }, 'nickname'], [{ nickname: '' }, 'nickname'], [{ nickname: 'x'.repeat(129) }, 'nickname'],
        [{ group_id: 0 }, 'group_id'], [{ group_id: 999999 }, 'group_id'], [{ metadata: [1, 2] }, 'metadata'],
        [{ status: 'online' }, 'status'], [{}, undefined], [{ group_id: 2 ** 63 }, 'group_id'],
        [{ metadata: { ['k'.repeat(129)]: 1 } }, 'metadata'], [{ metadata: { '': 1 } }, 'metadata'],
        // PostgreSQL cannot store U+0000; JSON.stringify overflows on deep nesting
        [{ nickname: 'a\u0000b' }, 'nickname'], [{ metadata: { note: ['ok', 'a\u0000'] } }, 'metadata.note.1'],
        [{ metadata: { ['a\u0000']: 1 } }, 'metadata.a\u0000']
      ] as const) {
        const response = await ts.api('PATCH', `/api/devices/${serial}`, { body })
        t.equal(response.status, 400, JSON.stringify(body))
        t.equal(response.body.error, 'invalid_request')
        t.equal(response.body.field, field, `${JSON.stringify(body)} names ${JSON.stringify(field) ?? 'no field'}`)
      }
      const malformed = await ts.api('PATCH', `/api/devices/${serial}`, { body: '{"nickname": ' })
      t.match(malformed, { status: 400, body: { error: 'malformed_json' } })
      const deep = await ts.api('PATCH', `/api/devices/${serial}`, { body: `{"metadata":{"deep":${'['.repeat(5000)}${']'.repeat(5000)}}}` })
      t.match(deep, { status: 400, body: { error: 'invalid_request', field: `metadata.deep${'.0'.repeat(30)}`, message: /nested more than 32 levels/ } }, '5,000 levels of arrays (10 KB)')
      const empty = await ts.api('PATCH', `/api/devices/${serial}`, { body: '' })
      t.match(empty, { status: 400, body: { error: 'invalid_request', message: /body/ } }, 'an empty JSON body is no body, which PATCH needs')
      const text = await ts.api('PATCH', `/api/devices/${serial}`, { body: '{"nickname":"x"}', headers: { 'content-type': 'text/plain' } })
      t.match(text, { status: 415, body: { error: 'unsupported_media_type' } }, 'a body that is not JSON is 415')
      for (const query of ['q=%00', 'firmware_version=a%00', `cursor=${Buffer.from('\u0000').toString('base64url')}`, 'group_id=9223372036854775808']) {
        const listed = await ts.api('GET', `/api/devices?${query}`)
        t.equal(listed.status, 400, query)
        t.equal(listed.body.field, query.split('=')[0], `${query} names the field`)
        if (query.includes('%00')) t.match(listed.body.message, 'NUL character (\\u0000)', 'the message names the character as text')
      }
      t.equal((await ts.api('PATCH', '/api/devices/no-such-device', { body: { nickname: 'x' } })).status, 404)
    })

    t.test('revoke kicks a live device at once; unrevoke lets it back', async (t) => {
      const serial = uniqueSerial('revoke')
      const identity = await ts.pki.device(serial)
      const device = await connectDevice({ url: ts.wsUrl, identity })
      t.teardown(() => device.close())
      await eventually(async () => (await ts.api('GET', `/api/devices/${serial}`)).body?.status === 'online', 5000, 'online')

      const closed = new Promise<void>(resolve => device.mqtt.once('close', () => { resolve() }))
      const revoked = await ts.api('POST', `/api/devices/${serial}/revoke`)
      t.match(revoked, { status: 200, body: { serial, revoked: true } })
      await closed
      t.pass('the connection was closed')
      await eventually(async () => (await retainedJson(ts, deviceTopic(serial, 'status')))?.reason === 'revoked', 5000, 'retained offline/revoked')
      const password = (timestamp: number): string => devicePassword(identity, { timestamp })
      t.equal(await connackCode(ts.wsUrl, { clientId: serial, username: serial, password: password(Math.floor(Date.now() / 1000) + 2) }), 5, 'refused while revoked')

      const restored = await ts.api('POST', `/api/devices/${serial}/unrevoke`)
      t.match(restored, { status: 200, body: { serial, revoked: false } })
      t.equal(await connackCode(ts.wsUrl, { clientId: serial, username: serial, password: password(Math.floor(Date.now() / 1000) + 3) }), 0, 'admitted again')
      t.equal((await ts.api('POST', '/api/devices/no-such-device/revoke')).status, 404)
      t.equal((await ts.api('POST', '/api/devices/no-such-device/unrevoke')).status, 404)
    })

    t.test('DELETE removes the device, kicks it and clears its retained status, info and firmware offer', async (t) => {
      const serial = uniqueSerial('delete')
      const device = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(serial), info: { firmware_version: '1.0.0' } })
      t.teardown(() => device.close())
      await eventually(async () => (await retainedJson(ts, deviceTopic(serial, 'status')))?.status === 'online', 5000, 'online')
      await eventually(async () => await retainedJson(ts, deviceTopic(serial, 'info')) !== undefined, 5000, 'retained info')
      // an offer of an update that the device's deletion takes with it
      await ts.server.broker.publish(deviceTopic(serial, 'firmware'), JSON.stringify({ update_id: 'u' }), { qos: 1, retain: true })

      const closed = new Promise<void>(resolve => device.mqtt.once('close', () => { resolve() }))
      const offline: unknown[] = []
      t.teardown(ts.server.events.subscribe(event => { if (event.type === 'device.offline' && event.serial === serial) offline.push(JSON.parse(event.json)) }))
      const deleted = await ts.api('DELETE', `/api/devices/${serial}`)
      t.equal(deleted.status, 204)
      t.equal(deleted.text, '')
      await closed
      t.equal((await ts.api('GET', `/api/devices/${serial}`)).status, 404, 'gone from the registry')
      for (const leaf of ['status', 'info', 'firmware'] as const) {
        await eventually(async () => await retainedPayload(ts, deviceTopic(serial, leaf)) === undefined, 5000, `retained ${leaf} cleared`)
      }
      t.equal((await ts.api('DELETE', `/api/devices/${serial}`)).status, 404, 'a second DELETE finds nothing')
      await eventually(() => offline.length > 0, 3000, 'device.offline for live dashboards')
      t.match(offline, [{ serial, reason: 'deleted' }])
    })
  })
}
