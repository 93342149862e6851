// /api/groups through a real server on PGlite and PostgreSQL: CRUD, duplicate names (409 from
// the unique index), validation errors naming the field, paging, membership all-or-nothing, and
// deleting a group ungrouping its devices.
import t from 'tap'
import { DATABASES, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

async function createGroup (ts: TestServer, name: string, description?: string): Promise<{ id: number, name: string }> {
  const response = await ts.api('POST', '/api/groups', { body: { name, ...(description === undefined ? {} : { description }) } })
  if (response.status !== 201) throw new Error(`create ${name}: ${response.status} ${response.text}`)
  return response.body
}

async function insertDevices (ts: TestServer, count: number, prefix: string): Promise<string[]> {
  const serials = Array.from({ length: count }, (_, i) => uniqueSerial(`${prefix}${i}`))
  await ts.server.db.knex('devices').insert(serials.map(serial => ({ serial })))
  return serials
}

const groupOf = async (ts: TestServer, serial: string): Promise<number | null> => {
  const row = await ts.server.db.knex('devices').where({ serial }).first('group_id') as { group_id: string | number | null }
  return row.group_id === null ? null : Number(row.group_id)
}

for (const database of DATABASES) {
  t.test(`groups on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })

    t.test('create, read, rename, describe, delete', async (t) => {
      const created = await ts.api('POST', '/api/groups', { body: { name: '  Lab benches  ', description: 'second floor' } })
      t.equal(created.status, 201, '201 on create')
      t.match(created.body, { name: 'Lab benches', description: 'second floor', device_count: 0 }, 'the name is trimmed')
      t.type(created.body.id, 'number', 'numeric id')
      t.ok(!Number.isNaN(Date.parse(created.body.inserted_at)), 'inserted_at is a date')
      const id = created.body.id as number

      t.same((await ts.api('GET', `/api/groups/${id}`)).body, created.body, 'GET answers the same group')

      const renamed = await ts.api('PATCH', `/api/groups/${id}`, { body: { name: 'Lab' } })
      t.equal(renamed.status, 200)
      t.match(renamed.body, { id, name: 'Lab', description: 'second floor' }, 'renamed, description kept')
      const cleared = await ts.api('PATCH', `/api/groups/${id}`, { body: { description: null } })
      t.match(cleared.body, { name: 'Lab', description: null }, 'description cleared')
      t.ok(Date.parse(cleared.body.updated_at) >= Date.parse(created.body.updated_at), 'updated_at moves on')

      const noDescription = await createGroup(ts, 'no-description')
      t.equal((noDescription as { description?: unknown }).description, null, 'description defaults to null')

      const deleted = await ts.api('DELETE', `/api/groups/${id}`)
      t.equal(deleted.status, 204, '204 on delete')
      t.equal(deleted.text, '', 'no body')
      t.equal((await ts.api('GET', `/api/groups/${id}`)).status, 404, 'gone')
    })

    t.test('duplicate names are refused with 409 on create and on rename', async (t) => {
      const first = await createGroup(ts, 'dup-a')
      const second = await createGroup(ts, 'dup-b')
      const again = await ts.api('POST', '/api/groups', { body: { name: ' dup-a ' } })
      t.equal(again.status, 409)
      t.match(again.body, { error: 'conflict', field: 'name', message: /dup-a/ })
      const rename = await ts.api('PATCH', `/api/groups/${second.id}`, { body: { name: 'dup-a' } })
      t.equal(rename.status, 409)
      t.match(rename.body, { error: 'conflict', field: 'name' })
      t.equal((await ts.api('GET', `/api/groups/${second.id}`)).body.name, 'dup-b', 'the rename did not happen')
      const same = await ts.api('PATCH', `/api/groups/${first.id}`, { body: { name: 'dup-a' } })
      t.equal(same.status, 200, 'renaming a group to its own name is fine')
    })

    t.test('400s name the field at fault', async (t) => {
      const cases: Array<{ what: string, method: 'POST' | 'PATCH', body: unknown, field?: string, error?: string }> = [
        { what: 'missing name', method: 'POST', body: { description: 'x' }, field: 'name' },
        { what: 'empty name', method: 'POST', body: { name: '' }, field: 'name' },
        { what: 'blank name', method: 'POST', body: { name: '   ' }, field: 'name' },
        { what: 'name too long', method: 'POST', body: { name: 'x'.repeat(129) }, field: 'name' },
        { what: 'control character', method: 'POST', body: { name: 'a\nb' }, field: 'name' },
        { what: 'name not a string', method: 'POST', body: { name: 5 }, field: 'name' },
        { what: 'name an array', method: 'POST', body: { name: ['x'] }, field: 'name' },
        { what: 'unknown field', method: 'POST', body: { name: 'ok-name', colour: 'red' }, field: 'colour' },
        { what: 'description too long', method: 'POST', body: { name: 'ok-name', description: 'd'.repeat(1025) }, field: 'description' },
        { what: 'malformed JSON', method: 'POST', body: '{"name": ', error: 'malformed_json' },
        { what: 'empty patch', method: 'PATCH', body: {} },
        { what: 'unknown field in a patch', method: 'PATCH', body: { nmae: 'x' }, field: 'nmae' },
        { what: 'blank name in a patch', method: 'PATCH', body: { name: ' ' }, field: 'name' }
      ]
      const group = await createGroup(ts, 'validation')
      for (const c of cases) {
        const response = await ts.api(c.method, c.method === 'POST' ? '/api/groups' : `/api/groups/${group.id}`, { body: c.body })
        t.equal(response.status, 400, `${c.what}: 400`)
        t.equal(response.body.error, c.error ?? 'invalid_request', `${c.what}: error code`)
        if (c.field !== undefined) t.equal(response.body.field, c.field, `${c.what}: names ${c.field}`)
      }
      t.equal((await ts.api('POST', '/api/groups', { body: { name: 'y'.repeat(128) } })).status, 201, '128 characters are fine')
      t.equal((await ts.api('GET', '/api/groups/abc')).status, 400, 'a non-numeric id: 400')
      t.equal((await ts.api('GET', '/api/groups?cursor=bogus')).body.field, 'cursor', 'a forged cursor: 400 naming cursor')
      t.equal((await ts.api('GET', '/api/groups?limit=0')).body.field, 'limit', 'limit 0: 400 naming limit')
    })

    t.test('404s', async (t) => {
      const missing = 987654321
      t.equal((await ts.api('GET', `/api/groups/${missing}`)).status, 404)
      t.equal((await ts.api('PATCH', `/api/groups/${missing}`, { body: { name: 'x' } })).status, 404)
      t.equal((await ts.api('DELETE', `/api/groups/${missing}`)).status, 404)
      const [serial] = await insertDevices(ts, 1, 'g404')
      const add = await ts.api('POST', `/api/groups/${missing}/devices`, { body: { serials: [serial] } })
      t.equal(add.status, 404, 'adding to an unknown group')
      t.match(add.body, { error: 'not_found', message: /group/ })
      t.equal((await ts.api('DELETE', `/api/groups/${missing}/devices/${serial}`)).status, 404, 'removing from an unknown group')
      t.equal((await ts.api('GET', '/api/groups', { token: null })).status, 401, 'no token: 401')
    })

    t.test('paging over more groups than one page', async (t) => {
      const paging = await startTestServer(t, { database }) // an empty server: exactly these groups
      const names = Array.from({ length: 7 }, (_, i) => `page-${String(i).padStart(2, '0')}`)
      for (const name of [...names].reverse()) await createGroup(paging, name)
      const seen: string[] = []
      let cursor: string | null = null
      let pages = 0
      do {
        const response: { status: number, body: { items: Array<{ name: string }>, next_cursor: string | null } } =
          await paging.api('GET', `/api/groups?limit=3${cursor === null ? '' : `&cursor=${cursor}`}`)
        t.equal(response.status, 200)
        t.ok(response.body.items.length <= 3, 'at most limit items')
        seen.push(...response.body.items.map(group => group.name))
        cursor = response.body.next_cursor
        pages++
      } while (cursor !== null && pages < 10)
      t.same(seen, names, 'every group once, ordered by name')
      t.equal(pages, 3, 'three pages of 3, 3 and 1')
    })

    t.test('membership: add, count, filter devices, remove', async (t) => {
      const group = await createGroup(ts, 'members')
      const serials = await insertDevices(ts, 3, 'mem')
      const added = await ts.api('POST', `/api/groups/${group.id}/devices`, { body: { serials } })
      t.equal(added.status, 200)
      t.match(added.body, { group: { id: group.id, name: 'members', device_count: 3 }, added: 3 })
      for (const serial of serials) t.equal(await groupOf(ts, serial), group.id, `${serial} is in the group`)

      const again = await ts.api('POST', `/api/groups/${group.id}/devices`, { body: { serials: [serials[0], serials[0]] } })
      t.match(again.body, { added: 0, group: { device_count: 3 } }, 'adding a member again changes nothing')

      const listed = await ts.api('GET', `/api/devices?group_id=${group.id}`)
      t.equal(listed.status, 200)
      t.same(listed.body.items.map((device: { serial: string }) => device.serial).sort(), [...serials].sort(), 'GET /api/devices?group_id lists the members')

      const inList = (await ts.api('GET', '/api/groups?limit=500')).body.items.find((g: { id: number }) => g.id === group.id)
      t.equal(inList.device_count, 3, 'the list shows the member count')

      const other = await createGroup(ts, 'members-other')
      const moved = await ts.api('POST', `/api/groups/${other.id}/devices`, { body: { serials: [serials[2]] } })
      t.match(moved.body, { added: 1, group: { device_count: 1 } }, 'a device moves from its group to the new one')
      t.equal((await ts.api('GET', `/api/groups/${group.id}`)).body.device_count, 2, 'the first group lost it')

      const removed = await ts.api('DELETE', `/api/groups/${group.id}/devices/${serials[0]}`)
      t.equal(removed.status, 204)
      t.equal(await groupOf(ts, serials[0]!), null, 'the device is ungrouped')
      const notMember = await ts.api('DELETE', `/api/groups/${group.id}/devices/${serials[2]}`)
      t.equal(notMember.status, 404, 'a device in another group: 404')
      t.match(notMember.body, { error: 'not_found', message: /not in group/ })
      t.equal(await groupOf(ts, serials[2]!), other.id, 'and it stays in its group')
      t.equal((await ts.api('DELETE', `/api/groups/${group.id}/devices/${uniqueSerial('ghost')}`)).status, 404, 'an unknown device: 404')
    })

    t.test('unknown serials are refused, named, and nothing changes', async (t) => {
      const group = await createGroup(ts, 'all-or-nothing')
      const serials = await insertDevices(ts, 2, 'aon')
      const ghosts = [uniqueSerial('ghost-a'), uniqueSerial('ghost-b')]
      const response = await ts.api('POST', `/api/groups/${group.id}/devices`, { body: { serials: [serials[0], ghosts[0], serials[1], ghosts[1]] } })
      t.equal(response.status, 400)
      t.equal(response.body.field, 'serials')
      for (const ghost of ghosts) t.match(response.body.message, ghost, `names ${ghost}`)
      t.notMatch(response.body.message, serials[0]!, 'does not name a known serial')
      for (const serial of serials) t.equal(await groupOf(ts, serial), null, `${serial} was not added`)

      const cases: Array<{ what: string, body: unknown, field: string }> = [
        { what: 'no serials', body: { serials: [] }, field: 'serials' },
        { what: 'too many serials', body: { serials: Array.from({ length: 1001 }, (_, i) => `s${i}`) }, field: 'serials' },
        { what: 'a malformed serial', body: { serials: ['bad/serial'] }, field: 'serials.0' },
        { what: 'missing serials', body: {}, field: 'serials' },
        { what: 'unknown field', body: { serials: [serials[0]], force: true }, field: 'force' }
      ]
      for (const c of cases) {
        const bad = await ts.api('POST', `/api/groups/${group.id}/devices`, { body: c.body })
        t.equal(bad.status, 400, `${c.what}: 400`)
        t.equal(bad.body.field, c.field, `${c.what}: names ${c.field}`)
      }
      t.equal((await ts.api('GET', `/api/groups/${group.id}`)).body.device_count, 0, 'still no members')
    })

    t.test('deleting a group leaves its devices ungrouped', async (t) => {
      const group = await createGroup(ts, 'doomed')
      const serials = await insertDevices(ts, 2, 'doom')
      t.equal((await ts.api('POST', `/api/groups/${group.id}/devices`, { body: { serials } })).status, 200)
      t.equal((await ts.api('DELETE', `/api/groups/${group.id}`)).status, 204)
      for (const serial of serials) {
        t.equal(await groupOf(ts, serial), null, `${serial} has group_id null`)
        t.equal((await ts.api('GET', `/api/devices/${serial}`)).body.group_id, null, `${serial} shows group_id null`)
      }
    })

    t.test('the OpenAPI document describes the group routes', async (t) => {
      const doc = (await ts.api('GET', '/api/openapi.json')).body
      for (const route of ['/api/groups', '/api/groups/{id}', '/api/groups/{id}/devices', '/api/groups/{id}/devices/{serial}']) {
        t.ok(doc.paths[route], `${route} is documented`)
      }
      t.same(doc.paths['/api/groups'].post.tags, ['groups'])
    })
  })
}
