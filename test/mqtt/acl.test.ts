// The device ACL of contract §3 against a real broker and real MQTT clients: subscriptions outside
// a device's own commands/firmware/errors are refused with SUBACK 0x80; publishes outside its own
// info/metrics/replies/update_status are acknowledged, dropped (no delivery, nothing retained)
// and reported on its errors topic; a will on another topic than its own status is dropped and
// reported; and the forwarding backstop keeps other devices' messages from a device.
// The ACL keeps no state in the database, so one server (PGlite) serves the file.
import t from 'tap'
import type { Test } from 'tap'
import type { Readable } from 'node:stream'
import { connectDevice, type DeviceClient } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { subackOf } from '../helpers/connect.js'

interface Received { topic: string, payload: string, retain: boolean }
interface ErrorReport { topic: string, reason: string, at: string }

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

/** A connected device that records everything it receives; it subscribes to nothing by itself. */
async function device (t: Test, ts: TestServer, serial = uniqueSerial('acl'), extra: Parameters<typeof connectDevice>[0]['mqttOptions'] = {}): Promise<{ client: DeviceClient, received: Received[] }> {
  const client = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), answerCommands: false, mqttOptions: extra })
  t.teardown(() => client.mqtt.end(true))
  const received: Received[] = []
  client.mqtt.on('message', (topic, payload, packet) => { received.push({ topic, payload: payload.toString(), retain: packet.retain }) })
  return { client, received }
}

/** One SUBSCRIBE; answers the SUBACK's return codes in filter order (mqtt.js rejects when any is 0x80). */
const suback = (client: DeviceClient, filters: Array<[string, 0 | 1]>): Promise<number[]> =>
  subackOf(client.mqtt, Object.fromEntries(filters.map(([topic, qos]) => [topic, { qos }])))

/** Subscribes a device to its own commands, firmware and errors (all must be granted). */
async function subscribeOwn (t: Test, client: DeviceClient): Promise<void> {
  const granted = await client.mqtt.subscribeAsync(['commands', 'firmware', 'errors'].map(leaf => deviceTopic(client.serial, leaf as 'commands')), { qos: 1 })
  t.same(granted.map(g => g.qos), [1, 1, 1], `${client.serial} may subscribe to its own commands, firmware, errors`)
}

async function retainedTopics (ts: TestServer, topic: string): Promise<Array<{ topic: string, payload: Buffer }>> {
  const persistence = (ts.server.broker.aedes as unknown as { persistence: { createRetainedStreamCombi (patterns: string[]): Readable } }).persistence
  const found: Array<{ topic: string, payload: Buffer }> = []
  for await (const packet of persistence.createRetainedStreamCombi([topic]) as AsyncIterable<{ topic: string, payload: Buffer }>) found.push(packet)
  return found
}

/** Everything published on `topic` inside the broker from now on (whoever publishes it). */
function watch (t: Test, ts: TestServer, topic: string): Received[] {
  const seen: Received[] = []
  const handler = (packet: { topic: string, payload: Buffer | string, retain?: boolean }, callback: () => void): void => {
    seen.push({ topic: packet.topic, payload: packet.payload.toString(), retain: packet.retain === true })
    callback()
  }
  ts.server.broker.aedes.subscribe(topic, handler, () => {})
  t.teardown(() => { ts.server.broker.aedes.unsubscribe(topic, handler, () => {}) })
  return seen
}

function errorReports (received: Received[], serial: string): ErrorReport[] {
  return received.filter(m => m.topic === deviceTopic(serial, 'errors')).map(m => JSON.parse(m.payload) as ErrorReport)
}

/** A marker message through the broker to `client`'s own commands: once it arrives, everything
 * published before it to that client has arrived too (one connection delivers in order). */
async function flush (ts: TestServer, client: DeviceClient, received: Received[]): Promise<void> {
  const marker = `flush-${Math.random()}`
  await ts.server.broker.publish(deviceTopic(client.serial, 'commands'), marker, { qos: 1, retain: false })
  await eventually(() => received.some(m => m.payload === marker), 5000, 'the flush marker')
  received.splice(received.findIndex(m => m.payload === marker), 1)
}

t.test('device ACL', async (t) => {
  const ts = await startTestServer(t)

  t.test('subscriptions outside the device\'s own commands/firmware/errors get SUBACK 0x80', async (t) => {
    const { client: a, received } = await device(t, ts)
    const other = uniqueSerial('other')
    const own = (leaf: 'commands' | 'firmware' | 'errors' | 'status' | 'info' | 'metrics' | 'replies' | 'update_status'): string => deviceTopic(a.serial, leaf)
    const refused = [
      '#',
      '+/devices/+/commands',
      `+/devices/${a.serial}/commands`,
      'shepherd/#',
      'shepherd/devices/+/commands',
      `shepherd/devices/${a.serial}/#`,
      `shepherd/devices/${a.serial}/+`,
      deviceTopic(other, 'commands'),
      deviceTopic(other, 'firmware'),
      '$SYS/#',
      '$SYS/broker/version',
      own('status'),
      own('info'),
      own('metrics'),
      own('replies'),
      own('update_status'),
      'shepherd/devices',
      'anything/else'
    ]
    for (const filter of refused) {
      t.same(await suback(a, [[filter, 1]]), [128], `SUBSCRIBE ${filter} → 0x80`)
    }
    // one SUBSCRIBE mixing refused and allowed filters: each filter gets its own answer
    const mixed = await suback(a, [['#', 1], [own('commands'), 1], [own('status'), 0], [own('firmware'), 0], [own('errors'), 1]])
    t.same(mixed, [128, 1, 128, 0, 1], 'per-filter answers in one SUBACK: #, own commands, own status, own firmware, own errors')
    t.ok(a.mqtt.connected, 'the device stays connected after refused subscriptions')

    // the refused filters deliver nothing: another device's commands, $SYS, a status update
    await ts.server.broker.publish(deviceTopic(other, 'commands'), '{"id":"x"}', { qos: 1, retain: false })
    await ts.server.broker.publish('$SYS/broker/version', 'test', { qos: 0, retain: false })
    await ts.server.broker.publish(deviceTopic(other, 'status'), '{"status":"online"}', { qos: 1, retain: false })
    await flush(ts, a, received)
    t.same(received, [], 'nothing arrived through the refused subscriptions')
    t.same(errorReports(received, a.serial), [], 'refused subscriptions are not reported on errors')
  })

  t.test('publishes outside the device\'s own topics are acknowledged, dropped and reported on errors', async (t) => {
    const { client: a, received: aReceived } = await device(t, ts)
    const { client: b, received: bReceived } = await device(t, ts)
    await subscribeOwn(t, a)
    await subscribeOwn(t, b)
    const cases: Array<{ topic: string, leaf: string, qos: 0 | 1 }> = [
      { topic: deviceTopic(b.serial, 'info'), leaf: deviceTopic(b.serial, 'info'), qos: 1 },
      { topic: deviceTopic(b.serial, 'commands'), leaf: deviceTopic(b.serial, 'commands'), qos: 1 },
      { topic: deviceTopic(b.serial, 'firmware'), leaf: deviceTopic(b.serial, 'firmware'), qos: 1 },
      { topic: deviceTopic(b.serial, 'errors'), leaf: deviceTopic(b.serial, 'errors'), qos: 0 },
      { topic: deviceTopic(b.serial, 'status'), leaf: deviceTopic(b.serial, 'status'), qos: 1 },
      { topic: '$SYS/broker/version', leaf: '$SYS/broker/version', qos: 1 },
      { topic: '$SYS/broker/clients/connected', leaf: '$SYS/broker/clients/connected', qos: 0 },
      { topic: deviceTopic(a.serial, 'status'), leaf: 'status', qos: 1 },
      { topic: deviceTopic(a.serial, 'commands'), leaf: 'commands', qos: 1 },
      { topic: deviceTopic(a.serial, 'firmware'), leaf: 'firmware', qos: 1 },
      { topic: deviceTopic(a.serial, 'errors'), leaf: 'errors', qos: 0 },
      { topic: `${deviceTopic(a.serial, 'info')}/extra`, leaf: `${deviceTopic(a.serial, 'info')}/extra`, qos: 1 },
      { topic: 'somewhere/else', leaf: 'somewhere/else', qos: 1 }
    ]
    const statusBefore = await retainedTopics(ts, deviceTopic(a.serial, 'status'))
    t.equal(statusBefore.length, 1, 'the server\'s retained status of the device is there')
    const watched = new Map(cases.map(c => [c.topic, watch(t, ts, c.topic)]))
    for (const c of cases) {
      const payload = JSON.stringify({ forged: c.topic, status: 'offline', reason: 'clean' })
      // publishAsync resolves on PUBACK for QoS 1 (and on the write for QoS 0)
      await a.mqtt.publishAsync(c.topic, payload, { qos: c.qos, retain: true })
      t.pass(`${c.topic} (QoS ${c.qos}) accepted at the protocol level${c.qos === 1 ? ' (PUBACK)' : ''}`)
    }
    await eventually(() => errorReports(aReceived, a.serial).length >= cases.length, 5000, 'an errors report per dropped publish')
    await flush(ts, a, aReceived)
    await flush(ts, b, bReceived)
    t.ok(a.mqtt.connected, 'the publishing device is still connected')
    const reports = errorReports(aReceived, a.serial)
    t.equal(reports.length, cases.length, 'exactly one report per dropped publish')
    t.same(reports.map(r => r.topic), cases.map(c => c.leaf), 'each report names the topic (the leaf for the device\'s own topics), in order')
    for (const report of reports) {
      t.match(report, { reason: /only its own info, metrics, replies, update_status/, at: ISO_UTC }, `report for ${report.topic} says why, with a time`)
      t.same(Object.keys(report).sort(), ['at', 'reason', 'topic'], 'report has exactly topic, reason, at')
    }
    t.same(aReceived.filter(m => m.topic !== deviceTopic(a.serial, 'errors')), [], 'the device got nothing back but its errors reports')
    t.same(bReceived, [], 'the other device received nothing (not on commands, firmware, nor errors)')
    for (const c of cases) {
      const delivered = (watched.get(c.topic) ?? []).filter(m => m.payload.includes('forged'))
      t.same(delivered, [], `nothing was delivered on ${c.topic}`)
      const kept = await retainedTopics(ts, c.topic)
      if (c.topic.endsWith('/status') || c.topic.startsWith('$SYS/broker/')) {
        // a device's status topic holds the server's retained presence, $SYS/broker/… the server's
        // own figures: they must be left alone
        t.same(kept.filter(p => p.payload.toString().includes('forged')), [], `the forged message was not retained on ${c.topic}`)
        t.equal(kept.length, 1, `${c.topic} keeps its one retained message, the server's`)
      } else {
        t.same(kept, [], `nothing retained on ${c.topic}`)
      }
    }
    const statusAfter = await retainedTopics(ts, deviceTopic(a.serial, 'status'))
    t.same(statusAfter.map(p => p.payload.toString()), statusBefore.map(p => p.payload.toString()), 'the retained status is still the server\'s own')
    t.same(await retainedTopics(ts, '$shepherd/dropped'), [], 'dropped publishes are not retained anywhere')
    t.same(errorReports(bReceived, b.serial), [], 'the other device got no errors reports')
  })

  t.test('publishes to the device\'s own info, metrics, replies and update_status pass', async (t) => {
    const { client: a, received } = await device(t, ts)
    await subscribeOwn(t, a)
    const leaves = ['info', 'metrics', 'replies', 'update_status'] as const
    const watched = new Map(leaves.map(leaf => [leaf, watch(t, ts, deviceTopic(a.serial, leaf))]))
    for (const leaf of leaves) await a.mqtt.publishAsync(deviceTopic(a.serial, leaf), JSON.stringify({ leaf }), { qos: 1 })
    await eventually(() => leaves.every(leaf => watched.get(leaf)!.length === 1), 5000, 'each allowed publish delivered')
    for (const leaf of leaves) t.same(watched.get(leaf)!.map(m => JSON.parse(m.payload) as unknown), [{ leaf }], `${leaf} delivered as published`)
    await flush(ts, a, received)
    // the payloads are validated after the ACL ({"leaf":…} is valid on none of these topics): the
    // reports name the payload's fault, never the ACL's
    const reports = errorReports(received, a.serial)
    t.same(reports.filter(r => /a device may publish only/.test(r.reason)), [], 'no ACL refusal for allowed publishes')
    t.same(reports.map(r => r.topic).sort(), ['metrics', 'replies', 'update_status'], 'payload faults reported where the payload is checked')
  })

  t.test('a will on another topic than the device\'s own status is dropped and reported after connect', async (t) => {
    const other = uniqueSerial('victim')
    const willTopic = deviceTopic(other, 'status')
    const willWatch = watch(t, ts, willTopic)
    const serial = uniqueSerial('badwill')
    const statusWatch = watch(t, ts, deviceTopic(serial, 'status'))
    const errorsWatch = watch(t, ts, deviceTopic(serial, 'errors'))
    const { client: a, received } = await device(t, ts, serial, {
      will: { topic: willTopic, payload: Buffer.from('{"status":"offline","reason":"lost"}'), qos: 1, retain: true }
    })
    // the device learns why once it listens on its errors topic (it cannot have subscribed before its CONNACK)
    await a.mqtt.subscribeAsync(deviceTopic(serial, 'errors'), { qos: 0 })
    const [report] = await eventually(() => { const r = errorReports(received, serial); return r.length > 0 ? r : undefined }, 3000, 'the will report on the errors topic')
    t.match(report, { topic: willTopic, reason: /will/, at: ISO_UTC }, 'the dropped will is reported on errors')
    t.equal(errorsWatch.length, 1, 'reported once')
    t.ok(a.mqtt.connected, 'the device stays connected')
    // dropping the connection must not publish the will
    a.mqtt.stream.destroy()
    await eventually(() => statusWatch.some(m => m.payload.includes('offline')), 5000, 'the server\'s offline status')
    await ts.server.settled()
    t.match(JSON.parse(statusWatch.at(-1)!.payload), { status: 'offline', reason: 'lost', at: ISO_UTC }, 'the server published the device\'s own offline/lost')
    t.same(willWatch, [], 'the will was never published')
    t.same(await retainedTopics(ts, willTopic), [], 'nor retained')
  })

  t.test('a restored session already listening on its errors topic gets the will report at once', async (t) => {
    const serial = uniqueSerial('persist')
    const identity = await ts.pki.device(serial)
    const now = Math.floor(Date.now() / 1000)
    // first connection: a persistent session that subscribes to its errors topic, then leaves
    const first = await connectDevice({ url: ts.mqttUrl, identity, answerCommands: false, timestamp: now - 20, mqttOptions: { clean: false } })
    t.same(await suback(first, [[deviceTopic(serial, 'errors'), 0]]), [0], 'subscribed to errors in the persistent session')
    await first.close()
    // second connection resumes the session (no SUBSCRIBE) with a will on another device's status
    const willTopic = deviceTopic(uniqueSerial('victim'), 'status')
    const received: Received[] = []
    const second = await connectDevice({
      url: ts.mqttUrl, identity, answerCommands: false, timestamp: now - 10,
      mqttOptions: { clean: false, will: { topic: willTopic, payload: Buffer.from('x'), qos: 0, retain: false } }
    })
    t.teardown(() => second.mqtt.end(true))
    second.mqtt.on('message', (topic, payload, packet) => { received.push({ topic, payload: payload.toString(), retain: packet.retain }) })
    const [report] = await eventually(() => { const r = errorReports(received, serial); return r.length > 0 ? r : undefined }, 3000, 'the will report through the restored subscription')
    t.match(report, { topic: willTopic, reason: /will/, at: ISO_UTC }, 'reported without subscribing again')
  })

  t.test('a will on the device\'s own status is accepted without a report; the server publishes the status', async (t) => {
    const serial = uniqueSerial('goodwill')
    const statusWatch = watch(t, ts, deviceTopic(serial, 'status'))
    const errorsWatch = watch(t, ts, deviceTopic(serial, 'errors'))
    // connectDevice sets the recommended will (own status, offline/lost, QoS 1, retained)
    const { client: a } = await device(t, ts, serial)
    await a.mqtt.subscribeAsync(deviceTopic(serial, 'errors'), { qos: 0 })
    await eventually(() => statusWatch.length === 1, 5000, 'online status')
    a.mqtt.stream.destroy()
    await eventually(() => statusWatch.length === 2, 5000, 'offline status')
    await ts.server.settled()
    const [, offline] = statusWatch.map(m => JSON.parse(m.payload) as Record<string, unknown>)
    t.match(offline, { status: 'offline', reason: 'lost', at: ISO_UTC }, 'one offline/lost status, from the server (it has a time)')
    t.equal(statusWatch.length, 2, 'the device\'s own will was not published in addition')
    t.same(errorsWatch, [], 'no errors report')
  })

  t.test('forwarding backstop: a subscription that bypassed the ACL still delivers only the device\'s own topics', async (t) => {
    const { client: a, received } = await device(t, ts)
    const { client: b, received: bReceived } = await device(t, ts)
    await subscribeOwn(t, b)
    t.same((await a.mqtt.subscribeAsync(deviceTopic(a.serial, 'commands'), { qos: 1 })).map(g => g.qos), [1], 'A subscribes to its commands only')
    // Reach into the broker and subscribe A's connection directly, as a broken hook or a session
    // restored from elsewhere could: to B's commands (not A's to receive) and to A's own firmware
    // (A's to receive; shows the injected route does deliver).
    const aedesClient = (ts.server.broker.aedes as unknown as { clients: Record<string, { deliverQoS (packet: unknown, cb: () => void): void }> }).clients[a.serial]
    if (aedesClient === undefined) throw new Error('A is not connected to the broker')
    const deliver = aedesClient.deliverQoS
    for (const topic of [deviceTopic(b.serial, 'commands'), deviceTopic(a.serial, 'firmware')]) {
      await new Promise<void>(resolve => { ts.server.broker.aedes.subscribe(topic, deliver as never, resolve) })
      t.teardown(() => { ts.server.broker.aedes.unsubscribe(topic, deliver as never, () => {}) })
    }
    await ts.server.broker.publish(deviceTopic(b.serial, 'commands'), '{"id":"for-b"}', { qos: 1, retain: false })
    await ts.server.broker.publish(deviceTopic(a.serial, 'firmware'), '{"for":"a"}', { qos: 1, retain: false })
    await eventually(() => bReceived.some(m => m.payload === '{"id":"for-b"}'), 5000, 'B gets its command')
    await eventually(() => received.some(m => m.topic === deviceTopic(a.serial, 'firmware')), 5000, 'A gets its own firmware through the injected route')
    await flush(ts, a, received)
    t.same(received.filter(m => m.topic.includes(b.serial)), [], 'A never received B\'s command')
    t.same(received.map(m => m.topic), [deviceTopic(a.serial, 'firmware')], 'A received only its own topic')
  })
})
