// OTA updates through the real server, on PGlite and PostgreSQL, with devices that report by
// hand: the offer (command and retained `firmware` message, contract §3) to online and offline
// devices, refusals, progress reports and update.progress events (on the bus and over SSE),
// completion by report or by the new version in info, failure, timeout (with no report, or with
// the same progress reported again), revert, forced supersede, group rollouts with mixed outcomes.
import { randomBytes } from 'node:crypto'
import t from 'tap'
import type { Test } from 'tap'
import { connectDevice, type DeviceClient } from '../../src/device-client/device-client.js'
import type { DeliveredEvent } from '../../src/events/event-bus.js'
import { deviceTopic } from '../../src/topics.js'
import { DATABASES, eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { isEvent, openEvents } from '../helpers/sse.js'
import { upload } from './store.test.js'

interface Received { topic: string, payload: string }

/** A reconnect signs a later timestamp than the connection before it (the server refuses a replayed one). */
const nextSecond = (): number => Math.floor(Date.now() / 1000) + 1

/** A device that performs nothing by itself: it records its commands, firmware and errors messages and reports by hand. */
async function manualDevice (t: Test, ts: TestServer, serial: string, info: Record<string, unknown> = { firmware_version: '1.0.0', firmware_target: 'rpi4' }) {
  const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), answerCommands: false, info })
  t.teardown(() => device.mqtt.end(true))
  const received: Received[] = []
  device.mqtt.on('message', (topic, payload) => { received.push({ topic, payload: payload.toString() }) })
  await device.mqtt.subscribeAsync([deviceTopic(serial, 'commands'), deviceTopic(serial, 'firmware'), deviceTopic(serial, 'errors')], { qos: 1 })
  await eventually(async () => (await ts.api('GET', `/api/devices/${serial}`)).body?.firmware_target === info.firmware_target, 5000, 'info recorded')
  return {
    device,
    received,
    offers: () => received.filter(m => m.topic === deviceTopic(serial, 'firmware')).map(m => m.payload === '' ? null : JSON.parse(m.payload)),
    commands: () => received.filter(m => m.topic === deviceTopic(serial, 'commands')).map(m => JSON.parse(m.payload)),
    errors: () => received.filter(m => m.topic === deviceTopic(serial, 'errors')).map(m => JSON.parse(m.payload)),
    report: async (body: Record<string, unknown>) => { await device.mqtt.publishAsync(deviceTopic(serial, 'update_status'), JSON.stringify(body), { qos: 1 }) }
  }
}

async function updateOf (ts: TestServer, id: string) {
  return (await ts.api('GET', `/api/updates/${id}`)).body
}

const untilState = (ts: TestServer, id: string, state: string) =>
  eventually(async () => { const update = await updateOf(ts, id); return update.state === state && update }, 5000, `update ${state}`)

for (const database of DATABASES) {
  t.test(`updates on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })
    const v2 = (await upload(ts, 'version=2.0.0&target=rpi4', randomBytes(4096))).body
    const other = (await upload(ts, 'version=2.0.0&target=bbb', randomBytes(4096))).body
    t.ok(v2.id !== undefined && other.id !== undefined, 'firmware uploaded')

    t.test('an online device: offer by command and retained message, progress, complete by report', async (t) => {
      const serial = uniqueSerial('ota')
      const dev = await manualDevice(t, ts, serial)
      const events: DeliveredEvent[] = []
      t.teardown(ts.server.events.subscribe(event => { if (event.type === 'update.progress' && event.serial === serial) events.push(event) }))

      const started = await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: v2.id } })
      t.equal(started.status, 202)
      t.match(started.body, { id: /^[0-9a-f-]{36}$/, serial, firmware_id: v2.id, version: '2.0.0', previous_version: '1.0.0', state: 'pending', command_id: /^[0-9a-f-]{36}$/ })
      const command = await eventually(() => dev.commands().find(c => c.command === 'update'), 5000, 'the update command')
      const offer = await eventually(() => dev.offers()[0], 5000, 'the retained offer')
      t.same(Object.keys(offer).sort(), ['firmware_id', 'reboot', 'sha256', 'size', 'target', 'update_id', 'url', 'version'], 'the payload of contract §3')
      t.match(offer, { update_id: started.body.id, firmware_id: v2.id, version: '2.0.0', target: 'rpi4', sha256: v2.sha256, size: 4096, reboot: true })
      t.match(command.payload, { update_id: started.body.id, sha256: v2.sha256 })
      t.equal(command.id, started.body.command_id)
      const download = await fetch(offer.url)
      t.equal(download.status, 200, 'the offer\'s URL downloads with no other credential')
      t.equal(Buffer.from(await download.arrayBuffer()).length, 4096)

      const second = await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: v2.id } })
      t.equal(second.status, 409, 'a second update while one is in progress')
      t.match(second.body.message, /in progress/)
      t.equal((await ts.api('DELETE', `/api/firmware/${v2.id}`)).status, 409, 'firmware in use cannot be deleted')

      await dev.report({ update_id: started.body.id, status: 'downloading', progress: 40 })
      const downloading = await untilState(ts, started.body.id, 'downloading')
      t.equal(downloading.progress, 40)
      t.match(downloading.downloading_at, /Z$/)
      await dev.report({ update_id: started.body.id, status: 'applying' })
      t.match(await untilState(ts, started.body.id, 'applying'), { applying_at: /Z$/ })
      await dev.report({ update_id: started.body.id, status: 'complete' })
      const complete = await untilState(ts, started.body.id, 'complete')
      t.match(complete, { progress: 100, completed_at: /Z$/, error: null, failure_reason: null })
      await eventually(() => dev.offers().at(-1) === null, 5000, 'the retained offer cleared (empty message)')
      const statuses = await eventually(() => events.length >= 4 && events.map(e => JSON.parse(e.json).status), 3000, 'update.progress events')
      t.same(statuses, ['pending', 'downloading', 'applying', 'complete'])
      t.match(JSON.parse(events[1]!.json), { serial, update_id: started.body.id, progress: 40 })

      await dev.report({ update_id: started.body.id, status: 'downloading' })
      const late = await eventually(() => dev.errors().find(e => e.topic === 'update_status'), 3000, 'a report on a finished update is refused')
      t.match(late.reason, /already complete/)
      const history = await ts.api('GET', `/api/devices/${serial}/updates`)
      t.same(history.body.items.map((u: { id: string }) => u.id), [started.body.id])
    })

    t.test('update.progress reaches a client of GET /api/events over a real HTTP stream', async (t) => {
      const serial = uniqueSerial('ota-sse')
      const dev = await manualDevice(t, ts, serial)
      const stream = await openEvents(t, ts, `?type=update.progress&serial=${serial}`)
      t.equal(stream.status, 200)
      const started = await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: v2.id } })
      const id: string = started.body.id
      const pending = await stream.waitFor('update.progress pending', frame => isEvent('update.progress', serial)(frame) && frame.data.status === 'pending')
      t.same(pending.data, { serial, update_id: id, status: 'pending' })
      await dev.report({ update_id: id, status: 'downloading', progress: 40 })
      const downloading = await stream.waitFor('update.progress downloading', frame => isEvent('update.progress', serial)(frame) && frame.data.status === 'downloading')
      t.same(downloading.data, { serial, update_id: id, status: 'downloading', progress: 40 })
      await dev.report({ update_id: id, status: 'failed', error: 'sha256 mismatch' })
      const failed = await stream.waitFor('update.progress failed', frame => isEvent('update.progress', serial)(frame) && frame.data.status === 'failed')
      t.same(failed.data, { serial, update_id: id, status: 'failed', progress: 40, error: 'sha256 mismatch', reason: 'device' })
      t.same(stream.frames.filter(frame => frame.event !== undefined).map(frame => `${frame.event} ${frame.data.status}`),
        ['update.progress pending', 'update.progress downloading', 'update.progress failed'], 'in order, and only this device\'s update.progress')
    })

    t.test('an offline device gets the retained offer when it connects; complete by the new version in info', async (t) => {
      const serial = uniqueSerial('offline')
      await ts.server.db.knex('devices').insert({ serial, firmware_version: '1.0.0', firmware_target: 'rpi4' })
      const started = await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: v2.id, ttl_seconds: 600 } })
      t.equal(started.status, 202)
      t.equal(new Date(started.body.expires_at).getTime() - new Date(started.body.created_at).getTime(), 600_000)
      const dev = await manualDevice(t, ts, serial)
      const offer = await eventually(() => dev.offers().find(o => o !== null), 5000, 'the retained offer on connect')
      t.equal(offer.update_id, started.body.id)
      t.equal((await fetch(offer.url)).status, 200, 'with a URL that works')
      await eventually(() => dev.commands().find(c => c.command === 'update'), 5000, 'the queued update command delivered on connect')
      await dev.report({ update_id: started.body.id, status: 'applying' })
      await untilState(ts, started.body.id, 'applying')
      // the device "reboots" into 2.0.0
      await dev.device.mqtt.endAsync(true)
      const back = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), answerCommands: false, timestamp: nextSecond(), info: { firmware_version: '2.0.0', firmware_target: 'rpi4' } })
      t.teardown(() => back.mqtt.end(true))
      t.match(await untilState(ts, started.body.id, 'complete'), { progress: 100 })
    })

    t.test('refusals: unknown firmware or device, revoked, other target unless forced, bad body', async (t) => {
      const serial = uniqueSerial('refuse')
      await ts.server.db.knex('devices').insert({ serial, firmware_target: 'rpi4' })
      const url = `/api/devices/${serial}/update`
      const unknown = await ts.api('POST', url, { body: { firmware_id: '00000000-0000-4000-8000-000000000000' } })
      t.equal(unknown.status, 404)
      t.equal(unknown.body.field, 'firmware_id')
      t.equal((await ts.api('POST', '/api/devices/nobody/update', { body: { firmware_id: v2.id } })).status, 404)
      t.equal((await ts.api('POST', url, { body: { firmware_id: 'x' } })).body.field, 'firmware_id')
      t.equal((await ts.api('POST', url, { body: { firmware_id: v2.id, ttl_seconds: 0 } })).body.field, 'ttl_seconds')
      t.equal((await ts.api('POST', url, { body: { firmware_id: v2.id, colour: 1 } })).status, 400)
      t.equal((await ts.api('POST', url, { body: { firmware_id: v2.id }, token: null })).status, 401)
      const mismatch = await ts.api('POST', url, { body: { firmware_id: other.id } })
      t.equal(mismatch.status, 409)
      t.match(mismatch.body, { error: 'conflict', field: 'firmware_id', message: /target bbb.*reports rpi4/ })
      const forced = await ts.api('POST', url, { body: { firmware_id: other.id, force: true } })
      t.equal(forced.status, 202, 'force overrides the target check')
      const replaced = await ts.api('POST', url, { body: { firmware_id: v2.id, force: true } })
      t.equal(replaced.status, 202, 'force replaces the update in progress')
      t.match(await updateOf(ts, forced.body.id), { state: 'failed', failure_reason: 'superseded', error: new RegExp(replaced.body.id) })
      await ts.api('POST', `/api/devices/${serial}/revoke`)
      t.equal((await ts.api('POST', url, { body: { firmware_id: v2.id, force: true } })).status, 409, 'revoked')
      t.equal((await ts.api('GET', '/api/updates/00000000-0000-4000-8000-000000000000')).status, 404)
      t.equal((await ts.api('GET', '/api/devices/nobody/updates')).status, 404)
    })

    t.test('failure reported by the device, a forged report for another device, malformed reports', async (t) => {
      const serial = uniqueSerial('fail')
      const dev = await manualDevice(t, ts, serial)
      const started = await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: v2.id } })
      const spy = await manualDevice(t, ts, uniqueSerial('spy'))
      await spy.report({ update_id: started.body.id, status: 'failed', error: 'forged' })
      const forged = await eventually(() => spy.errors().find(e => e.topic === 'update_status'), 3000, 'the forged report refused')
      t.match(forged.reason, /no update .* for this device/)
      for (const body of [{ update_id: 'nope', status: 'failed' }, { update_id: started.body.id, status: 'exploded' }, { update_id: started.body.id, status: 'downloading', progress: 140 }]) await dev.report(body)
      await eventually(() => dev.errors().filter(e => e.topic === 'update_status').length === 3, 3000, 'three malformed reports refused')
      t.equal((await updateOf(ts, started.body.id)).state, 'pending', 'none of them changed the update')
      await dev.report({ update_id: started.body.id, status: 'failed', error: 'sha256 mismatch' })
      t.match(await untilState(ts, started.body.id, 'failed'), { failure_reason: 'device', error: 'sha256 mismatch', completed_at: /Z$/ })
      await eventually(() => dev.offers().at(-1) === null, 5000, 'the retained offer cleared')
    })

    t.test('timeout: a device quiet too long, or re-reporting the same progress, while downloading; an offer never started before it expires', async (t) => {
      const serial = uniqueSerial('quiet')
      const dev = await manualDevice(t, ts, serial)
      const started = await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: v2.id } })
      await dev.report({ update_id: started.body.id, status: 'downloading', progress: 10 })
      await untilState(ts, started.body.id, 'downloading')
      // the last report an hour and a minute ago (UPDATE_STAGE_TIMEOUT is one hour)
      await ts.server.db.knex('updates').where({ id: started.body.id }).update({ status_at: new Date(Date.now() - 3_660_000) })
      const failed = await untilState(ts, started.body.id, 'failed')
      t.match(failed, { failure_reason: 'timeout', error: /no progress .*while downloading/ })
      await eventually(() => dev.offers().at(-1) === null, 5000, 'the retained offer cleared')

      // two devices downloading whose last progress was as long ago, the timeout 5 s away: one
      // re-reports the same progress (and none), the other a higher progress. The sweep fails
      // both in one statement, so once the stuck one failed the other would have too had its
      // clock not restarted.
      const [stuck, slow] = await Promise.all([uniqueSerial('stuck'), uniqueSerial('slow')].map(async (member) => {
        const device = await manualDevice(t, ts, member)
        const id: string = (await ts.api('POST', `/api/devices/${member}/update`, { body: { firmware_id: v2.id } })).body.id
        return { serial: member, dev: device, id }
      }))
      const reports: DeliveredEvent[] = []
      t.teardown(ts.server.events.subscribe(event => { if (event.type === 'update.progress') reports.push(event) }))
      const reportsOf = (serial: string) => reports.filter(event => event.serial === serial).map(event => JSON.parse(event.json))
      for (const { dev, id } of [stuck!, slow!]) await dev.report({ update_id: id, status: 'downloading', progress: 40 })
      for (const { id } of [stuck!, slow!]) await untilState(ts, id, 'downloading')
      const lastProgress = new Date(Date.now() - 3_600_000 + 5000)
      await ts.server.db.knex('updates').whereIn('id', [stuck!.id, slow!.id]).update({ status_at: lastProgress })
      await stuck!.dev.report({ update_id: stuck!.id, status: 'downloading', progress: 40 })
      await stuck!.dev.report({ update_id: stuck!.id, status: 'downloading' })
      await slow!.dev.report({ update_id: slow!.id, status: 'downloading', progress: 41 })
      await eventually(() => reportsOf(stuck!.serial).length >= 3 && reportsOf(slow!.serial).length >= 2, 4000, 'the reports applied')
      t.same(reportsOf(stuck!.serial).map(r => [r.status, r.progress]), [['downloading', 40], ['downloading', 40], ['downloading', 40]], 'each report applied (and announced)')
      t.match(await updateOf(ts, stuck!.id), { state: 'downloading', progress: 40, status_at: lastProgress.toISOString() }, 'the same progress again does not restart the clock')
      const climbing = await updateOf(ts, slow!.id)
      t.match(climbing, { state: 'downloading', progress: 41 })
      t.ok(new Date(climbing.status_at) > lastProgress, 'a higher progress restarts the clock')

      const timedOut = await eventually(async () => { const u = await updateOf(ts, stuck!.id); return u.state === 'failed' && u }, 10_000, 'the stuck update failed')
      t.match(timedOut, { failure_reason: 'timeout', error: /no progress .*while downloading/ }, 'stuck at 40 % times out')
      t.match(await updateOf(ts, slow!.id), { state: 'downloading', progress: 41, failure_reason: null }, 'a download that keeps climbing does not')
      await slow!.dev.report({ update_id: slow!.id, status: 'applying' })
      t.match(await untilState(ts, slow!.id, 'applying'), { failure_reason: null })

      const offline = uniqueSerial('never')
      await ts.server.db.knex('devices').insert({ serial: offline })
      const waiting = await ts.api('POST', `/api/devices/${offline}/update`, { body: { firmware_id: v2.id, ttl_seconds: 1 } })
      t.match(await eventually(async () => { const u = await updateOf(ts, waiting.body.id); return u.state === 'failed' && u }, 5000, 'expired pending'), {
        failure_reason: 'timeout', error: /did not start/
      })
    })

    t.test('revert: the device comes back on the old version after applying', async (t) => {
      const serial = uniqueSerial('revert')
      const dev = await manualDevice(t, ts, serial)
      const started = await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: v2.id } })
      await dev.report({ update_id: started.body.id, status: 'applying' })
      await untilState(ts, started.body.id, 'applying')
      await dev.device.publishInfo({ firmware_version: '1.0.0', firmware_target: 'rpi4' })
      await new Promise(resolve => setTimeout(resolve, 300))
      t.equal((await updateOf(ts, started.body.id)).state, 'applying', 'the old version on the same connection is not a revert')
      await dev.device.mqtt.endAsync(true)
      const back = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), answerCommands: false, timestamp: nextSecond(), info: { firmware_version: '1.0.0', firmware_target: 'rpi4' } })
      t.teardown(() => back.mqtt.end(true))
      t.match(await untilState(ts, started.body.id, 'failed'), { failure_reason: 'reverted', error: /came back with firmware 1.0.0 after applying 2.0.0/ })
    })

    t.test('re-flashing the version a device runs: complete only once it applied and came back, not on the next info', async (t) => {
      const serial = uniqueSerial('reflash')
      const dev = await manualDevice(t, ts, serial, { firmware_version: '2.0.0', firmware_target: 'rpi4' })
      const started = await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: v2.id } })
      t.equal(started.status, 202)
      await dev.report({ update_id: started.body.id, status: 'downloading', progress: 10 })
      await untilState(ts, started.body.id, 'downloading')
      await dev.device.publishInfo({ firmware_version: '2.0.0', firmware_target: 'rpi4', uptime: 5 })
      await new Promise(resolve => setTimeout(resolve, 300))
      t.equal((await updateOf(ts, started.body.id)).state, 'downloading', 'the version it already ran proves nothing')
      await dev.report({ update_id: started.body.id, status: 'applying' })
      await untilState(ts, started.body.id, 'applying')
      await dev.report({ update_id: started.body.id, status: 'pending' })
      const refused = await eventually(() => dev.errors().find(e => e.topic === 'update_status'), 3000, 'a report of an earlier stage refused')
      t.match(refused.reason, /is already applying/, 'stages only move forward (an earlier one would escape the stage timeout)')
      await dev.device.mqtt.endAsync(true)
      const back = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), answerCommands: false, timestamp: nextSecond(), info: { firmware_version: '2.0.0', firmware_target: 'rpi4' } })
      t.teardown(() => back.mqtt.end(true))
      t.match(await untilState(ts, started.body.id, 'complete'), { progress: 100 }, 'complete once back after applying')
    })

    t.test('group rollout with mixed outcomes: complete, failed, pending (offline), skipped (other target, revoked); counts by state', async (t) => {
      const group = (await ts.api('POST', '/api/groups', { body: { name: `rollout-${randomBytes(3).toString('hex')}` } })).body
      const online = uniqueSerial('g-on')
      const dev = await manualDevice(t, ts, online)
      const done = uniqueSerial('g-done')
      const doneDev = await manualDevice(t, ts, done)
      const offline = uniqueSerial('g-off')
      const wrong = uniqueSerial('g-bbb')
      const revoked = uniqueSerial('g-rev')
      await ts.server.db.knex('devices').insert([{ serial: offline, firmware_target: 'rpi4' }, { serial: wrong, firmware_target: 'bbb' }, { serial: revoked, revoked: true }])
      await ts.api('POST', `/api/groups/${group.id}/devices`, { body: { serials: [online, done, offline, wrong, revoked] } })
      const rollout = await ts.api('POST', `/api/groups/${group.id}/update`, { body: { firmware_id: v2.id } })
      t.equal(rollout.status, 202)
      t.match(rollout.body, { group_id: group.id, firmware_id: v2.id, version: '2.0.0', total: 3, states: { pending: 3 } })
      t.same(rollout.body.updates.map((u: { serial: string }) => u.serial).sort(), [online, done, offline].sort())
      t.same(rollout.body.ids, rollout.body.updates.map((u: { id: string }) => u.id))
      t.same(rollout.body.skipped.map((s: { serial: string, reason: string }) => [s.serial, s.reason]).sort(), [[revoked, 'revoked'], [wrong, 'target_mismatch']].sort())
      const idOf = (serial: string): string => rollout.body.updates.find((u: { serial: string }) => u.serial === serial).id
      const mine = idOf(online)
      await eventually(() => dev.offers().find(o => o?.update_id === mine), 5000, 'the online member got its offer')
      await dev.report({ update_id: mine, status: 'failed', error: 'no space left' })

      // the other online member applies the update and comes back on the new version
      const doneId = idOf(done)
      await eventually(() => doneDev.offers().find(o => o?.update_id === doneId), 5000, 'the second online member got its offer')
      await doneDev.report({ update_id: doneId, status: 'downloading', progress: 100 })
      await doneDev.report({ update_id: doneId, status: 'applying' })
      await untilState(ts, doneId, 'applying')
      await doneDev.device.mqtt.endAsync(true)
      const back = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(done), answerCommands: false, timestamp: nextSecond(), info: { firmware_version: '2.0.0', firmware_target: 'rpi4' } })
      t.teardown(() => back.mqtt.end(true))
      t.match(await untilState(ts, doneId, 'complete'), { progress: 100, failure_reason: null })

      const counts = await eventually(async () => {
        const r = await ts.api('GET', `/api/groups/${group.id}/updates/${rollout.body.rollout_id}`)
        return r.body.states.failed === 1 && r.body.states.complete === 1 && r.body
      }, 5000, 'counted')
      t.match(counts, { rollout_id: rollout.body.rollout_id, group_id: group.id, total: 3 })
      t.same(counts.states, { pending: 1, downloading: 0, applying: 0, complete: 1, failed: 1 }, 'one complete, one failed, the offline member still pending (skipped members not counted)')
      t.equal((await ts.api('GET', `/api/groups/${group.id + 1000}/updates/${rollout.body.rollout_id}`)).status, 404, 'another group\'s rollout')
      t.equal((await ts.api('POST', `/api/groups/${group.id + 1000}/update`, { body: { firmware_id: v2.id } })).status, 404)
    })

    t.test('a deleted firmware leaves finished updates readable', async (t) => {
      const fw = (await upload(ts, `version=3.0.0&target=rpi4`, randomBytes(64))).body
      const serial = uniqueSerial('hist')
      await ts.server.db.knex('devices').insert({ serial })
      const started = await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: fw.id } })
      t.equal((await ts.api('DELETE', `/api/firmware/${fw.id}`)).status, 409)
      await ts.server.db.knex('updates').where({ id: started.body.id }).update({ expires_at: new Date(Date.now() - 1000) })
      await untilState(ts, started.body.id, 'failed')
      t.equal((await ts.api('DELETE', `/api/firmware/${fw.id}`)).status, 204)
      t.match(await updateOf(ts, started.body.id), { firmware_id: null, version: '3.0.0', sha256: fw.sha256 })
    })
  })
}

export type { DeviceClient }
