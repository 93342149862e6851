// The `info` topic (contract §3), on both databases: firmware fields go to their columns, any other
// top-level keys merge into the device's metadata; a payload that is not a JSON object, or a
// firmware field that is not a string, is reported on the device's errors topic and changes nothing.
import t from 'tap'
import type { Test } from 'tap'
import { connectDevice, type DeviceClient } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import type { Device } from '../../src/devices/types.js'
import { DATABASES, eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

interface ErrorReport { topic: string, reason: string, at: string }

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

async function row (ts: TestServer, serial: string): Promise<Device> {
  const found = await ts.server.db.knex<Device>('devices').where({ serial }).first()
  if (found === undefined) throw new Error(`no devices row for ${serial}`)
  return found
}

/** A device subscribed to its own errors topic, collecting the reports. */
async function device (t: Test, ts: TestServer): Promise<{ client: DeviceClient, reports: ErrorReport[] }> {
  const client = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(uniqueSerial('info')), answerCommands: false })
  t.teardown(() => client.mqtt.end(true))
  const reports: ErrorReport[] = []
  client.mqtt.on('message', (topic, payload) => {
    if (topic === deviceTopic(client.serial, 'errors')) reports.push(JSON.parse(payload.toString()) as ErrorReport)
  })
  await client.mqtt.subscribeAsync([deviceTopic(client.serial, 'errors'), deviceTopic(client.serial, 'commands')], { qos: 1 })
  return { client, reports }
}

/** Waits until every info publish before now has been handled: the server's handling of a
 * publish on one connection is ordered with a later well-formed info carrying `marker`. */
async function settledInfo (ts: TestServer, client: DeviceClient): Promise<void> {
  const marker = `m-${Math.random()}`
  await client.mqtt.publishAsync(deviceTopic(client.serial, 'info'), JSON.stringify({ settle_marker: marker }), { qos: 1, retain: true })
  await eventually(async () => (await row(ts, client.serial)).metadata.settle_marker === marker, 5000, 'the marker info')
}

async function publishInfo (client: DeviceClient, payload: string | Buffer): Promise<void> {
  await client.mqtt.publishAsync(deviceTopic(client.serial, 'info'), payload, { qos: 1, retain: true })
}

for (const database of DATABASES) {
  t.test(`info topic on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })

    t.test('firmware fields go to their columns, other keys merge into metadata', async (t) => {
      const { client, reports } = await device(t, ts)
      const before = await row(ts, client.serial)
      t.match(before, { firmware_version: null, firmware_target: null, firmware_uuid: null }, 'a new device has no firmware info')
      t.same(before.metadata, {}, 'and empty metadata')
      // metadata set elsewhere (an operator, through the API) must survive a device's info
      await ts.server.db.knex('devices').where({ serial: client.serial }).update({ metadata: JSON.stringify({ location: 'lab' }) })

      await publishInfo(client, JSON.stringify({ firmware_version: '1.2.3', firmware_target: 'rpi4', firmware_uuid: 'u', foo: 1 }))
      const updated = await eventually(async () => { const r = await row(ts, client.serial); return r.firmware_version === '1.2.3' ? r : undefined }, 5000, 'firmware_version stored')
      t.match(updated, { firmware_version: '1.2.3', firmware_target: 'rpi4', firmware_uuid: 'u' }, 'firmware columns set')
      t.same(updated.metadata, { location: 'lab', foo: 1 }, 'foo merged into metadata, existing keys kept, firmware keys not copied there')
      t.ok(updated.updated_at.getTime() >= before.updated_at.getTime(), 'updated_at moved')

      // a later info with only some keys: absent firmware fields stay, metadata keys merge (top level)
      await publishInfo(client, JSON.stringify({ firmware_version: '1.2.4', foo: { nested: [1, 2] }, bar: 'x' }))
      const merged = await eventually(async () => { const r = await row(ts, client.serial); return r.firmware_version === '1.2.4' ? r : undefined }, 5000, 'second info stored')
      t.match(merged, { firmware_version: '1.2.4', firmware_target: 'rpi4', firmware_uuid: 'u' }, 'only the given firmware field changed')
      t.same(merged.metadata, { location: 'lab', foo: { nested: [1, 2] }, bar: 'x' }, 'foo replaced, bar added, location kept')
      await settledInfo(ts, client)
      t.same(reports, [], 'no errors reports for valid info')
      t.ok(client.mqtt.connected, 'the device is still connected')
    })

    t.test('the reference client\'s info on connect is recorded', async (t) => {
      // (the reference client publishes its info from its on-connect handler, which it installs
      // only when it answers commands — the default)
      const client = await connectDevice({
        url: ts.wsUrl, identity: await ts.pki.device(uniqueSerial('info')),
        info: { firmware_version: '9.9.9', firmware_target: 'x86_64', firmware_uuid: 'uuid-9', board: 'rev-b' }
      })
      t.teardown(() => client.mqtt.end(true))
      const recorded = await eventually(async () => { const r = await row(ts, client.serial); return r.firmware_version === '9.9.9' ? r : undefined }, 5000, 'info from connect stored')
      t.match(recorded, { firmware_target: 'x86_64', firmware_uuid: 'uuid-9' })
      t.same(recorded.metadata, { board: 'rev-b' })
    })

    t.test('invalid info payloads are reported on errors and change nothing', async (t) => {
      const { client, reports } = await device(t, ts)
      await publishInfo(client, JSON.stringify({ firmware_version: '2.0.0', firmware_target: 'rpi4', firmware_uuid: 'good', keep: true }))
      await eventually(async () => (await row(ts, client.serial)).firmware_version === '2.0.0', 5000, 'valid info stored')
      const good = await row(ts, client.serial)
      const invalid: Array<{ payload: string | Buffer, reason: RegExp, what: string }> = [
        { payload: 'not json at all', reason: /not valid JSON/, what: 'non-JSON text' },
        { payload: Buffer.from([0xff, 0xfe, 0x00, 0x01]), reason: /not valid JSON/, what: 'binary garbage' },
        { payload: '{"firmware_version": "3.0.0",', reason: /not valid JSON/, what: 'truncated JSON' },
        { payload: '[1, 2, 3]', reason: /JSON object/, what: 'a JSON array' },
        { payload: '"1.2.3"', reason: /JSON object/, what: 'a JSON string' },
        { payload: 'null', reason: /JSON object/, what: 'JSON null' },
        { payload: JSON.stringify({ firmware_version: 3, other: 'dropped too' }), reason: /firmware_version must be a string/, what: 'a numeric firmware_version' },
        { payload: JSON.stringify({ firmware_target: 'x'.repeat(300) }), reason: /firmware_target must be a string of at most 256/, what: 'an overlong firmware_target' },
        { payload: JSON.stringify({ firmware_uuid: null }), reason: /firmware_uuid must be a string/, what: 'a null firmware_uuid' },
        { payload: JSON.stringify({ notes: 'x'.repeat(70_000) }), reason: /metadata would exceed 65536 bytes/, what: 'metadata past its cap' },
        { payload: JSON.stringify({ note: 'a\u0000b' }), reason: /note contains a NUL character/, what: 'a NUL character' }
      ]
      for (const { payload } of invalid) await publishInfo(client, payload)
      await settledInfo(ts, client)
      await eventually(() => reports.length >= invalid.length, 5000, 'a report per invalid payload')
      t.equal(reports.length, invalid.length, 'exactly one report per invalid payload')
      invalid.forEach(({ reason, what }, i) => {
        t.match(reports[i], { topic: 'info', reason, at: ISO_UTC }, `${what} is reported`)
      })
      const after = await row(ts, client.serial)
      t.match(after, { firmware_version: '2.0.0', firmware_target: 'rpi4', firmware_uuid: 'good' }, 'firmware columns unchanged')
      t.same({ ...after.metadata, settle_marker: undefined }, { ...good.metadata, settle_marker: undefined }, 'metadata unchanged (a rejected payload stores none of its keys)')
      t.notOk('other' in after.metadata, 'keys of a rejected object are not stored')
      t.ok(client.mqtt.connected, 'the device stays connected')
    })

    t.test('an empty retained info clears the retained message, is not reported, and keeps the registry as it was', async (t) => {
      const { client, reports } = await device(t, ts)
      await publishInfo(client, JSON.stringify({ firmware_version: '4.0.0', site: 'lab' }))
      await eventually(async () => (await row(ts, client.serial)).firmware_version === '4.0.0', 5000, 'info stored')
      await publishInfo(client, '')
      await settledInfo(ts, client)
      t.same(reports, [], 'no report for the empty message')
      t.match(await row(ts, client.serial), { firmware_version: '4.0.0', metadata: { site: 'lab' } })
    })

    t.test('an info published to another device\'s topic changes nothing there', async (t) => {
      const { client: a, reports } = await device(t, ts)
      const { client: b } = await device(t, ts)
      await a.mqtt.publishAsync(deviceTopic(b.serial, 'info'), JSON.stringify({ firmware_version: '6.6.6', evil: true }), { qos: 1, retain: true })
      await eventually(() => reports.length === 1, 5000, 'the ACL report')
      t.match(reports[0], { topic: deviceTopic(b.serial, 'info') }, 'reported to the publisher as an ACL refusal')
      await settledInfo(ts, b)
      await settledInfo(ts, a)
      const other = await row(ts, b.serial)
      t.equal(other.firmware_version, null, 'the other device\'s firmware is untouched')
      t.notOk('evil' in other.metadata, 'nor its metadata')
      t.equal((await row(ts, a.serial)).firmware_version, null, 'nor was it applied to the publisher')
    })

    t.test('bursts of info messages: the last one published wins', async (t) => {
      const { client } = await device(t, ts)
      const count = 30
      for (let burst = 0; burst < 5; burst++) {
        // published back to back on one connection: the server must apply them in that order
        await Promise.all(Array.from({ length: count }, (_, i) =>
          publishInfo(client, JSON.stringify({ firmware_version: `${burst}.0.${i}`, sequence: i }))))
        await settledInfo(ts, client)
        const final = await row(ts, client.serial)
        t.equal(final.firmware_version, `${burst}.0.${count - 1}`, `burst ${burst}: firmware_version is the last published`)
        t.equal(final.metadata.sequence, count - 1, `burst ${burst}: metadata is the last published`)
      }
    })
  })
}
