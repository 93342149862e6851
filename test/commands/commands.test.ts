// Commands end to end, on PGlite and PostgreSQL: REST → a real MQTT device → its reply → state ok
// with the result and the round trip; validation and refusals; the offline queue delivered in
// order on connect; expiry before and after delivery; idempotent retries; paging; replies that
// are forged, unknown or malformed; group fan-out with online, offline and revoked members.
import pg from 'pg'
import t from 'tap'
import type { Test } from 'tap'
import { connectDevice, type DeviceClient } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { DATABASES, eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { isEvent, openEvents } from '../helpers/sse.js'

interface Received { topic: string, body: any } // eslint-disable-line @typescript-eslint/no-explicit-any

/** A device that does not answer by itself: it records what arrives on its commands and errors topics. */
async function listeningDevice (t: Test, ts: TestServer, serial: string): Promise<{ device: DeviceClient, received: Received[], reply: (body: unknown) => Promise<void> }> {
  const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), answerCommands: false })
  t.teardown(() => device.mqtt.end(true))
  const received: Received[] = []
  device.mqtt.on('message', (topic, payload) => { received.push({ topic, body: JSON.parse(payload.toString()) }) })
  await device.mqtt.subscribeAsync([deviceTopic(serial, 'commands'), deviceTopic(serial, 'errors')], { qos: 1 })
  return {
    device,
    received,
    reply: async (body) => { await device.mqtt.publishAsync(deviceTopic(serial, 'replies'), JSON.stringify(body), { qos: 1 }) }
  }
}

/** A device known to the registry but offline. */
async function offlineDevice (ts: TestServer, serial: string): Promise<void> {
  await ts.server.db.knex('devices').insert({ serial })
}

const commandsOf = (received: Received[], serial: string) => received.filter(message => message.topic === deviceTopic(serial, 'commands')).map(message => message.body)
const errorsOf = (received: Received[], serial: string) => received.filter(message => message.topic === deviceTopic(serial, 'errors')).map(message => message.body)

async function stateOf (ts: TestServer, id: string): Promise<string> {
  return (await ts.api('GET', `/api/commands/${id}`)).body.state
}

for (const database of DATABASES) {
  t.test(`commands on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })

    t.test('ping through the reference device: sent, answered, ok with the echo and the round trip, command.reply event', async (t) => {
      const serial = uniqueSerial('ping')
      const device = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(serial) })
      t.teardown(() => device.close())
      await eventually(async () => (await ts.api('GET', `/api/devices/${serial}`)).body?.status === 'online', 5000, 'online')
      const stream = await openEvents(t, ts, `?type=command.reply&serial=${serial}`)

      const issued = await ts.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'ping', payload: { echo: 'hello' } } })
      t.equal(issued.status, 202)
      t.match(issued.body, { id: /^[0-9a-f-]{36}$/, serial, command: 'ping', state: 'sent', payload: { echo: 'hello' }, sent_at: /Z$/, completed_at: null })
      t.equal(new Date(issued.body.expires_at).getTime() - new Date(issued.body.issued_at).getTime(), 86_400_000, 'default ttl one day')

      const done = await eventually(async () => { const r = await ts.api('GET', `/api/commands/${issued.body.id}`); return r.body.state === 'ok' && r.body }, 5000, 'ok')
      t.same(done.result, { echo: 'hello' })
      t.ok(typeof done.round_trip_ms === 'number' && done.round_trip_ms >= 0 && done.round_trip_ms < 5000, `round trip ${done.round_trip_ms} ms stored`)
      t.match(done, { completed_at: /Z$/ })
      const frame = await stream.waitFor('the command.reply event on /api/events', isEvent('command.reply', serial), 2000)
      t.match(frame.data, { serial, id: issued.body.id, command: 'ping', status: 'ok', result: { echo: 'hello' }, round_trip_ms: Number })

      const identify = await ts.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'identify', payload: { duration_seconds: 5 } } })
      await eventually(async () => await stateOf(ts, identify.body.id) === 'ok', 5000, 'identify ok')
    })

    t.test('bad requests name the field; unknown device 404; revoked 409; no token 401', async (t) => {
      const serial = uniqueSerial('bad')
      await offlineDevice(ts, serial)
      const url = `/api/devices/${serial}/commands`
      for (const [body, field] of [
        [{ command: 'selfdestruct' }, 'command'],
        [{}, 'command'],
        [{ command: 'ping', payload: { colour: 'red' } }, 'payload.colour'],
        [{ command: 'ping', payload: [1] }, 'payload'],
        [{ command: 'reboot', payload: { now: true } }, 'payload.now'],
        [{ command: 'identify', payload: { duration_seconds: '5' } }, 'payload.duration_seconds'],
        [{ command: 'identify', payload: { duration_seconds: 0 } }, 'payload.duration_seconds'],
        [{ command: 'update', payload: { update_id: 'u1' } }, 'payload.firmware_id'],
        [{ command: 'ping', ttl_seconds: 0 }, 'ttl_seconds'],
        [{ command: 'ping', ttl_seconds: -5 }, 'ttl_seconds'],
        [{ command: 'ping', ttl_seconds: 30 * 86_400 + 1 }, 'ttl_seconds'],
        [{ command: 'ping', ttl_seconds: 1.5 }, 'ttl_seconds'],
        [{ command: 'ping', payload: { echo: 'x'.repeat(17_000) } }, 'payload'],
        [{ command: 'ping', payload: { echo: 'a\u0000b' } }, 'payload.echo'],
        [{ command: 'ping', colour: 'red' }, 'colour']
      ] as const) {
        const response = await ts.api('POST', url, { body })
        t.equal(response.status, 400, JSON.stringify(body).slice(0, 80))
        t.match(response.body, { error: 'invalid_request', field, message: String }, `names ${field}`)
      }
      t.equal((await ts.api('POST', url, { body: { command: 'selfdestruct' } })).body.message, 'command must be one of reboot, identify, ping, update', 'the allowed values are named')
      t.equal((await ts.api('POST', url, { body: '{"command":' })).body.error, 'malformed_json')
      t.equal((await ts.api('POST', url, { body: { command: 'ping' }, headers: { 'idempotency-key': 'with space' } })).body.field, 'idempotency-key')
      t.equal((await ts.api('POST', '/api/devices/nobody-here/commands', { body: { command: 'ping' } })).status, 404)
      t.equal((await ts.api('POST', url, { body: { command: 'ping' }, token: null })).status, 401)
      t.equal((await ts.api('GET', '/api/commands/00000000-0000-4000-8000-000000000000')).status, 404)
      t.equal((await ts.api('GET', '/api/commands/not-a-uuid')).body.field, 'id')
      t.equal((await ts.api('GET', '/api/devices/nobody-here/commands')).status, 404)

      await ts.api('POST', `/api/devices/${serial}/revoke`)
      const revoked = await ts.api('POST', url, { body: { command: 'ping' } })
      t.equal(revoked.status, 409)
      t.match(revoked.body, { error: 'conflict', message: /revoked/ })
      t.equal((await ts.api('GET', `/api/devices/${serial}/commands`)).body.items.length, 0, 'nothing was stored for a refused request')
    })

    t.test('an offline device gets its queued commands in order when it connects and subscribes', async (t) => {
      const serial = uniqueSerial('queue')
      await offlineDevice(ts, serial)
      const ids: string[] = []
      for (const echo of ['one', 'two', 'three']) {
        const response = await ts.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'ping', payload: { echo } } })
        t.equal(response.status, 202)
        t.equal(response.body.state, 'queued', `${echo} queued`)
        ids.push(response.body.id)
      }
      const { received, reply } = await listeningDevice(t, ts, serial)
      const delivered = await eventually(() => commandsOf(received, serial).length >= 3 && commandsOf(received, serial), 5000, 'three commands')
      t.same(delivered.map(c => c.id), ids, 'in the order issued')
      t.same(delivered.map(c => c.payload.echo), ['one', 'two', 'three'])
      t.same(Object.keys(delivered[0]).sort(), ['command', 'expires_at', 'id', 'issued_at', 'payload'], 'the message of contract §3')
      t.equal(await stateOf(ts, ids[0]!), 'sent')
      for (const id of ids) await reply({ id, status: 'ok', result: { echo: 'pong' } })
      await reply({ id: ids[1], status: 'error', error: 'late second answer' })
      for (const id of ids) await eventually(async () => await stateOf(ts, id) === 'ok', 5000, `${id} ok`)
      const report = await eventually(() => errorsOf(received, serial).find(e => e.topic === 'replies'), 3000, 'a report for the second reply')
      t.match(report.reason, new RegExp(`command ${ids[1]} is already ok`))
    })

    t.test('a command queued while the device has just connected (its row not yet online) is delivered at once', async (t) => {
      const serial = uniqueSerial('just-connected')
      const { received } = await listeningDevice(t, ts, serial)
      await eventually(async () => (await ts.api('GET', `/api/devices/${serial}`)).body?.status === 'online', 5000, 'online')
      // the moment between the device's SUBSCRIBE (which delivered what was queued) and its row turning online
      await ts.server.db.knex('devices').where({ serial }).update({ status: 'offline' })
      const issued = await ts.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'ping', payload: { echo: 'now' } } })
      t.equal(issued.body.state, 'queued', 'the row said offline')
      const [delivered] = await eventually(() => commandsOf(received, serial).length > 0 && commandsOf(received, serial), 3000, 'delivered without a new SUBSCRIBE')
      t.equal(delivered.id, issued.body.id)
      t.equal(await stateOf(ts, issued.body.id), 'sent')
      await new Promise(resolve => setTimeout(resolve, 200))
      t.equal(commandsOf(received, serial).length, 1, 'once')
    })

    t.test('expiry: a queued command is never delivered after it; a sent one nobody answers expires too', async (t) => {
      const serial = uniqueSerial('expire')
      await offlineDevice(ts, serial)
      const queued = await ts.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'reboot', ttl_seconds: 1 } })
      t.equal(queued.body.state, 'queued')
      await eventually(async () => await stateOf(ts, queued.body.id) === 'expired', 5000, 'expired while queued')
      const { received, reply } = await listeningDevice(t, ts, serial)
      await eventually(async () => (await ts.api('GET', `/api/devices/${serial}`)).body.status === 'online', 5000, 'online')
      const sent = await ts.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'ping', payload: { echo: 1 }, ttl_seconds: 1 } })
      t.equal(sent.body.state, 'sent')
      await eventually(() => commandsOf(received, serial).length >= 1, 3000, 'the second command delivered')
      t.same(commandsOf(received, serial).map(c => c.id), [sent.body.id], 'the expired command was not delivered')
      const expired = await eventually(async () => { const r = await ts.api('GET', `/api/commands/${sent.body.id}`); return r.body.state === 'expired' && r.body }, 5000, 'expired after delivery')
      t.match(expired, { completed_at: /Z$/, round_trip_ms: null })
      await reply({ id: sent.body.id, status: 'ok', result: {} })
      const report = await eventually(() => errorsOf(received, serial).find(e => e.topic === 'replies'), 3000, 'the late reply reported')
      t.match(report.reason, /is already expired/)
      t.equal(await stateOf(ts, sent.body.id), 'expired', 'a late reply changes nothing')

      // answered just after expires_at, whether or not the once-a-second sweep has run yet
      const late = await ts.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'ping', payload: { echo: 2 }, ttl_seconds: 1 } })
      await eventually(() => commandsOf(received, serial).some(c => c.id === late.body.id), 3000, 'delivered')
      await new Promise(resolve => setTimeout(resolve, new Date(late.body.expires_at).getTime() - Date.now() + 20))
      await reply({ id: late.body.id, status: 'ok', result: {} })
      await eventually(() => errorsOf(received, serial).filter(e => e.topic === 'replies').length >= 2, 3000, 'the second late reply reported')
      t.match(errorsOf(received, serial).filter(e => e.topic === 'replies')[1].reason, new RegExp(`command ${late.body.id} is already expired`))
      t.equal(await eventually(async () => { const state = await stateOf(ts, late.body.id); return state !== 'sent' && state }, 3000, 'settled'), 'expired', 'not ok: it expired before the answer')
    })

    t.test('Idempotency-Key: a retry answers the same command; the key with another request is 409', async (t) => {
      const serial = uniqueSerial('idem')
      await offlineDevice(ts, serial)
      const url = `/api/devices/${serial}/commands`
      const headers = { 'idempotency-key': `key-${serial}` }
      const first = await ts.api('POST', url, { body: { command: 'ping', payload: { echo: 'a', n: undefined } }, headers })
      const again = await ts.api('POST', url, { body: { command: 'ping', payload: { echo: 'a' } }, headers })
      t.equal(again.status, 202)
      t.equal(again.body.id, first.body.id, 'the same command')
      t.equal(again.headers['idempotent-replayed'], 'true')
      t.notOk(first.headers['idempotent-replayed'])
      const different = await ts.api('POST', url, { body: { command: 'ping', payload: { echo: 'b' } }, headers })
      t.equal(different.status, 409)
      t.equal(different.body.field, 'Idempotency-Key')
      t.equal((await ts.api('GET', `${url}`)).body.items.length, 1, 'one command stored')
      const other = uniqueSerial('idem-other')
      await offlineDevice(ts, other)
      t.not((await ts.api('POST', `/api/devices/${other}/commands`, { body: { command: 'ping', payload: { echo: 'a' } }, headers })).body.id, first.body.id, 'keys are per device')
    })

    t.test('a device\'s commands, newest first, in pages, filtered by state', async (t) => {
      const serial = uniqueSerial('list')
      await offlineDevice(ts, serial)
      const ids: string[] = []
      for (let i = 0; i < 7; i++) ids.push((await ts.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'ping', payload: { echo: i }, ...(i === 0 ? { ttl_seconds: 1 } : {}) } })).body.id)
      const seen: string[] = []
      let cursor: string | null = null
      let pages = 0
      do {
        const response = await ts.api('GET', `/api/devices/${serial}/commands?limit=3${cursor === null ? '' : `&cursor=${cursor}`}`)
        t.equal(response.status, 200)
        seen.push(...response.body.items.map((c: { id: string }) => c.id))
        cursor = response.body.next_cursor
        pages++
      } while (cursor !== null && pages < 10)
      t.same(seen, [...ids].reverse(), 'every command once, newest first')
      t.equal(pages, 3)
      await eventually(async () => await stateOf(ts, ids[0]!) === 'expired', 5000, 'the first expired')
      t.same((await ts.api('GET', `/api/devices/${serial}/commands?state=expired`)).body.items.map((c: { id: string }) => c.id), [ids[0]])
      t.equal((await ts.api('GET', `/api/devices/${serial}/commands?state=lost`)).body.field, 'state')
      t.equal((await ts.api('GET', `/api/devices/${serial}/commands?cursor=${Buffer.from('nonsense').toString('base64url')}`)).body.field, 'cursor')
    })

    t.test('replies for unknown or another device\'s commands, malformed replies, and forged commands are refused', async (t) => {
      const [a, b] = [uniqueSerial('victim'), uniqueSerial('forger')]
      const victim = await listeningDevice(t, ts, a)
      const forger = await listeningDevice(t, ts, b)
      const issued = await ts.api('POST', `/api/devices/${a}/commands`, { body: { command: 'ping' } })
      await eventually(() => commandsOf(victim.received, a).length === 1, 3000, 'delivered to the victim')

      await forger.reply({ id: issued.body.id, status: 'ok', result: { forged: true } })
      await forger.reply({ id: '00000000-0000-4000-8000-000000000000', status: 'ok' })
      await forger.device.mqtt.publishAsync(deviceTopic(b, 'replies'), 'not json', { qos: 1 })
      await forger.reply({ id: issued.body.id, status: 'done' })
      await forger.reply({ id: issued.body.id, status: 'ok', result: { text: 'a\u0000b' } })
      // a device may neither answer for another device nor send it commands
      await forger.device.mqtt.publishAsync(deviceTopic(a, 'replies'), JSON.stringify({ id: issued.body.id, status: 'ok' }), { qos: 1 })
      await forger.device.mqtt.publishAsync(deviceTopic(a, 'commands'), JSON.stringify({ id: issued.body.id, command: 'reboot' }), { qos: 1 })

      const reports = await eventually(() => { const e = errorsOf(forger.received, b); return e.length >= 7 && e }, 5000, 'seven reports to the forger')
      const reasons = reports.map(report => `${report.topic}: ${report.reason}`)
      // each publish is checked on its own, so the reports may come in any order
      for (const expected of [
        `replies: no command ${issued.body.id} for this device`, // another device's id looks unknown
        'replies: no command 00000000-0000-4000-8000-000000000000 for this device',
        'replies: a reply is not valid JSON',
        `replies: status must be "ok" or "error" (command ${issued.body.id})`,
        'replies: a reply: result.text contains a NUL character (\\u0000), which cannot be stored'
      ]) t.ok(reasons.includes(expected), expected)
      t.same(reports.map(r => r.topic).filter(topic => topic !== 'replies').sort(), [deviceTopic(a, 'commands'), deviceTopic(a, 'replies')], 'ACL refusals for the victim\'s topics')
      t.equal(commandsOf(victim.received, a).length, 1, 'the forged command never reached the victim')
      t.equal(await stateOf(ts, issued.body.id), 'sent', 'the victim\'s command is untouched')
      t.ok(ts.logs.some(line => line.msg === 'device message refused' && line.serial === b), 'refusals logged with the serial')

      await victim.reply({ id: issued.body.id, status: 'error', error: 'no echo today' })
      const failed = await eventually(async () => { const r = await ts.api('GET', `/api/commands/${issued.body.id}`); return r.body.state === 'error' && r.body }, 3000, 'error state')
      t.equal(failed.error, 'no echo today')
      t.notOk('result' in failed)
    })

    t.test('group fan-out: online members sent, offline queued, revoked skipped; counts follow the replies', async (t) => {
      const group = (await ts.api('POST', '/api/groups', { body: { name: uniqueSerial('fleet') } })).body
      const online = [uniqueSerial('g-on'), uniqueSerial('g-on')]
      const [offline, revoked] = [uniqueSerial('g-off'), uniqueSerial('g-rev')]
      const devices = await Promise.all(online.map(async serial => await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(serial) })))
      t.teardown(() => Promise.all(devices.map(d => d.close())))
      await offlineDevice(ts, offline)
      await offlineDevice(ts, revoked)
      await ts.api('POST', `/api/devices/${revoked}/revoke`)
      for (const serial of online) await eventually(async () => (await ts.api('GET', `/api/devices/${serial}`)).body?.status === 'online', 5000, 'online')
      t.equal((await ts.api('POST', `/api/groups/${group.id}/devices`, { body: { serials: [...online, offline, revoked] } })).status, 200)

      const url = `/api/groups/${group.id}/commands`
      const headers = { 'idempotency-key': `fan-${group.id}` }
      const issued = await ts.api('POST', url, { body: { command: 'ping', payload: { echo: 'all' } }, headers })
      t.equal(issued.status, 202)
      t.equal(issued.body.ids.length, 3)
      const stateBySerial = Object.fromEntries(issued.body.commands.map((c: { serial: string, state: string }) => [c.serial, c.state]))
      t.same(stateBySerial, { [online[0]!]: 'sent', [online[1]!]: 'sent', [offline]: 'queued' })
      t.same(issued.body.skipped, [{ serial: revoked, reason: 'revoked' }])
      t.match(issued.body, { total: 3, states: { sent: 2, queued: 1, ok: 0 } })
      const retried = await ts.api('POST', url, { body: { command: 'ping', payload: { echo: 'all' } }, headers })
      t.equal(retried.body.batch_id, issued.body.batch_id, 'an idempotent retry answers the same fan-out')
      t.same(retried.body.ids.sort(), [...issued.body.ids].sort())
      t.same(retried.body.skipped, issued.body.skipped, 'with the same skipped members')

      const summary = `${url}/${issued.body.batch_id}`
      await eventually(async () => (await ts.api('GET', summary)).body.states.ok === 2, 5000, 'two members answered')
      t.match((await ts.api('GET', summary)).body, { command: 'ping', total: 3, states: { ok: 2, queued: 1 } })

      const late = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(offline) })
      t.teardown(() => late.close())
      await eventually(async () => (await ts.api('GET', summary)).body.states.ok === 3, 5000, 'the offline member answered once connected')

      t.equal((await ts.api('POST', '/api/groups/999999/commands', { body: { command: 'ping' } })).status, 404)
      t.equal((await ts.api('POST', url, { body: { command: 'nope' } })).body.field, 'command')
      t.equal((await ts.api('GET', `/api/groups/999999/commands/${issued.body.batch_id}`)).status, 404, 'a fan-out is found under its own group only')
      const empty = (await ts.api('POST', '/api/groups', { body: { name: uniqueSerial('empty') } })).body
      t.match((await ts.api('POST', `/api/groups/${empty.id}/commands`, { body: { command: 'reboot' } })).body, { total: 0, ids: [] })
    })
  })
}

t.test('queued commands survive a server restart (PostgreSQL)', async (t) => {
  const first = await startTestServer(t, { database: 'postgres', keepDatabase: true })
  const serial = uniqueSerial('restart')
  await offlineDevice(first, serial)
  const issued = await first.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'ping', payload: { echo: 'after restart' } } })
  t.equal(issued.body.state, 'queued')
  await first.close()

  // registered first, so it runs after the second server closed
  t.teardown(async () => {
    const url = new URL(first.databaseUrl!)
    const admin = new pg.Client({ connectionString: first.databaseUrl!.replace(/\/[^/]*$/, '/postgres') })
    await admin.connect()
    await admin.query(`DROP DATABASE IF EXISTS ${url.pathname.slice(1)} WITH (FORCE)`)
    await admin.end()
  })
  const second = await startTestServer(t, { databaseUrl: first.databaseUrl, pki: first.pki })
  const device = await connectDevice({ url: second.mqttUrl, identity: await second.pki.device(serial) })
  t.teardown(() => device.close())
  const done = await eventually(async () => { const r = await second.api('GET', `/api/commands/${issued.body.id}`); return r.body.state === 'ok' && r.body }, 5000, 'answered after the restart')
  t.same(done.result, { echo: 'after restart' })
})
