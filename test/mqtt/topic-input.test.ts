// NUL, control characters and ill-formed UTF-8 in topics from an authenticated device, over TCP
// and WebSocket (issue 2). MQTT 3.1.1 forbids U+0000 in topic names and filters
// [MQTT-4.7.3-2, MQTT-1.5.3-2]; Shepherd keeps to its device ACL (contract §3) for them:
// - a PUBLISH is acknowledged, dropped (not delivered, not retained, not recorded) and reported
//   on the device's errors topic, and logged with the reason; the device stays connected;
// - a SUBSCRIBE filter is refused with SUBACK 0x80 and logged with the reason;
// - a will on such a topic is dropped (never published nor retained), logged, and reported on
//   the errors topic once the device listens there.
// - a topic or filter that is malformed anyway (a wildcard out of place) closes the connection,
//   as Aedes does for any such packet, logged as a warning with reason protocol_error and Aedes's words.
// Ill-formed UTF-8 is decoded with U+FFFD replacements (it can never turn into an allowed topic)
// and then treated the same. No case crashes the server, leaves a promise rejection unhandled,
// reaches the registry or the retained store, or keeps another device from connecting.
import t, { type Test } from 'tap'
import mqttPacket from 'mqtt-packet'
import { connectDevice, devicePassword, type DeviceClient } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { startTestServer, eventually, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { asDevice, connackCode, subackOf } from '../helpers/connect.js'

const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => {
  unhandled.push(reason)
  t.fail(`unhandled rejection: ${reason instanceof Error ? reason.stack ?? reason.message : String(reason)}`)
})

interface Received { topic: string, payload: string }
interface ErrorReport { topic: string, reason: string, at: string }
type LogLine = Record<string, unknown>

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/
/** C0 and C1 controls, DEL, and the replacement character that ill-formed UTF-8 decodes to. */
const SUSPICIOUS = /[\u0000-\u001f\u007f-\u009f\ufffd]/

/** U+0000 U+0001 … as a test name says it. */
const named = (text: string): string => [...text].map(c => c.codePointAt(0)! < 0x20 || (c.codePointAt(0)! >= 0x7f && c.codePointAt(0)! <= 0x9f)
  ? `<U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}>`
  : c).join('')

// ---- helpers ----

/** A connected device (no automatic subscriptions) that records what it receives. */
async function device (t: Test, ts: TestServer, url: string, mqttOptions: Parameters<typeof connectDevice>[0]['mqttOptions'] = {}): Promise<{ client: DeviceClient, received: Received[] }> {
  const client = await connectDevice({ url, identity: await ts.pki.device(uniqueSerial('topic')), answerCommands: false, mqttOptions })
  t.teardown(() => client.mqtt.end(true))
  const received: Received[] = []
  client.mqtt.on('message', (topic, payload) => { received.push({ topic, payload: payload.toString() }) })
  return { client, received }
}

function errorReports (received: Received[], serial: string): ErrorReport[] {
  return received.filter(m => m.topic === deviceTopic(serial, 'errors')).map(m => JSON.parse(m.payload) as ErrorReport)
}

/** The one log line since `mark` that `match` picks (waits for it); undefined if none came. */
async function logged (ts: TestServer, mark: number, match: (line: LogLine) => boolean, what: string): Promise<LogLine[]> {
  return await eventually(() => {
    const found = ts.logs.slice(mark).filter(match)
    return found.length > 0 ? found : undefined
  }, 2000, what).catch(() => [])
}

/** Every retained topic in the broker (`#` does not match `$…` topics; those are checked apart). */
async function retainedTopics (ts: TestServer, pattern = '#'): Promise<string[]> {
  const persistence = (ts.server.broker.aedes as unknown as { persistence: { createRetainedStreamCombi (patterns: string[]): AsyncIterable<{ topic: string }> } }).persistence
  const topics: string[] = []
  for await (const packet of persistence.createRetainedStreamCombi([pattern])) topics.push(packet.topic)
  return topics
}

/** Writes a packet as bytes on the client's connection (what mqtt.js will not build: a topic of raw bytes). */
function writeRaw (client: DeviceClient, bytes: Buffer): void {
  client.mqtt.stream.write(bytes)
}

/** The next packet of `cmd` with `messageId` the client receives (mqtt.js ignores acks of ids it did not send). */
async function nextPacket (client: DeviceClient, cmd: string, messageId: number): Promise<mqttPacket.Packet> {
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { cleanup(); reject(new Error(`no ${cmd} for message id ${messageId}`)) }, 3000)
    const onPacket = (packet: mqttPacket.Packet): void => {
      if (packet.cmd === cmd && (packet as { messageId?: number }).messageId === messageId) { cleanup(); resolve(packet) }
    }
    const onClose = (): void => { cleanup(); reject(new Error(`connection closed before the ${cmd}`)) }
    const cleanup = (): void => { clearTimeout(timer); client.mqtt.off('packetreceive', onPacket).off('close', onClose) }
    client.mqtt.on('packetreceive', onPacket).on('close', onClose)
  })
}

/** A SUBSCRIBE with one filter of raw bytes, QoS 1 (mqtt-packet's generator takes string filters only). */
function rawSubscribe (messageId: number, filter: Buffer): Buffer {
  const body = Buffer.alloc(2 + 2 + filter.length + 1)
  body.writeUInt16BE(messageId, 0)
  body.writeUInt16BE(filter.length, 2)
  filter.copy(body, 4)
  body[4 + filter.length] = 1
  return Buffer.concat([Buffer.from([0x82, body.length]), body]) // body < 128 bytes: one length byte
}

/** The device's registry record over REST: no info from a refused topic may reach it. */
async function assertNothingRecorded (t: Test, ts: TestServer, serial: string): Promise<void> {
  const response = await ts.api('GET', `/api/devices/${serial}`)
  t.equal(response.status, 200, 'the device is registered')
  t.equal(response.body.firmware_version, null, 'no firmware_version recorded')
  t.same(response.body.metadata, {}, 'no metadata recorded')
}

/** Nothing in the retained store under a topic with a control character or U+FFFD. */
async function assertNothingRetainedSuspicious (t: Test, ts: TestServer): Promise<void> {
  const topics = [...await retainedTopics(ts, '#'), ...await retainedTopics(ts, '$shepherd/#')]
  t.same(topics.filter(topic => SUSPICIOUS.test(topic)).map(named), [], 'no retained message under a topic with a control character or U+FFFD')
}

/** A good device still connects over both transports; the server still answers REST. */
async function assertStillServing (t: Test, ts: TestServer): Promise<void> {
  for (const url of [ts.wsUrl, ts.mqttUrl]) {
    const identity = await ts.pki.device(uniqueSerial())
    t.equal(await connackCode(url, asDevice(identity.serial, devicePassword(identity))), 0, `a good device still connects (${url.split(':')[0]})`)
  }
  t.equal((await ts.api('GET', '/api/health', { token: null })).status, 200, 'the REST API still answers')
}

// ---- the server for this file ----

const ts = await startTestServer(t)
const transports: Array<[string, string]> = [['WebSocket', ts.wsUrl], ['TCP', ts.mqttUrl]]

/** Every message published inside the broker on a topic with a control character or U+FFFD. */
const suspiciousDeliveries: string[] = []
const watcher = (packet: { topic: string }, callback: () => void): void => {
  if (SUSPICIOUS.test(packet.topic)) suspiciousDeliveries.push(packet.topic)
  callback()
}
await new Promise<void>(resolve => { ts.server.broker.aedes.subscribe('#', watcher as never, resolve) })
t.teardown(() => { ts.server.broker.aedes.unsubscribe('#', watcher as never, () => {}) })

t.test('PUBLISH to a topic with NUL or a control character: acknowledged, dropped, reported, logged', async (t) => {
  for (const [transport, url] of transports) {
    const { client, received } = await device(t, ts, url)
    const serial = client.serial
    const info = deviceTopic(serial, 'info')
    t.same((await client.mqtt.subscribeAsync(deviceTopic(serial, 'errors'), { qos: 0 })).map(g => g.qos), [0], `${transport}: subscribed to its errors topic`)
    const topics = [
      `${info}\u0000`, // a C string would read the device's own info topic
      `${info}\u0000x`,
      `shepherd/devices/${serial}\u0000/info`,
      `\u0000${info}`,
      `${info}\u0001`,
      `${info}\u001b[2J`,
      `${info}\n`,
      `${info}\u007f`,
      `${info}\u0085` // C1 NEL, two bytes in UTF-8
    ]
    for (const topic of topics) {
      await t.test(`${transport}: ${named(topic)}`, async (t) => {
        const mark = ts.logs.length
        const before = errorReports(received, serial).length
        // publishAsync resolves on the PUBACK (QoS 1)
        await client.mqtt.publishAsync(topic, JSON.stringify({ firmware_version: '6.6.6', evil: true }), { qos: 1, retain: true })
        t.pass('PUBACK: accepted at the protocol level (MQTT-3.3.5-2)')
        const [report] = await eventually(() => { const r = errorReports(received, serial).slice(before); return r.length > 0 ? r : undefined }, 3000, 'the errors report')
          .catch(() => [] as ErrorReport[])
        t.match(report, { topic, reason: /only its own info, metrics, replies, update_status/, at: ISO_UTC }, 'reported on the errors topic with the exact topic and the reason')
        const lines = await logged(ts, mark, line => line.msg === 'device publish refused' && line.serial === serial, 'the refusal log line')
        t.equal(lines.length, 1, 'one refusal logged')
        t.match(lines[0], { level: 40, serial, topic, reason: /only its own/ }, 'a warning with the serial, the topic and the reason')
        t.ok(client.mqtt.connected, 'the device stays connected')
      })
    }

    await t.test(`${transport}: ill-formed UTF-8 (raw PUBLISH bytes)`, async (t) => {
      const cases: Array<[string, Buffer]> = [
        ['a lone 0xFF', Buffer.concat([Buffer.from(info), Buffer.from([0xff])])],
        ['an overlong NUL (0xC0 0x80)', Buffer.concat([Buffer.from(info), Buffer.from([0xc0, 0x80])])],
        ['a lone continuation byte', Buffer.concat([Buffer.from(`shepherd/devices/${serial}`), Buffer.from([0x80]), Buffer.from('/info')])],
        ['a UTF-16 surrogate (0xED 0xA0 0x80)', Buffer.concat([Buffer.from(info), Buffer.from([0xed, 0xa0, 0x80])])]
      ]
      for (const [name, bytes] of cases) {
        const mark = ts.logs.length
        const before = errorReports(received, serial).length
        const messageId = 60000 + cases.findIndex(c => c[0] === name)
        const acked = nextPacket(client, 'puback', messageId)
        writeRaw(client, mqttPacket.generate({ cmd: 'publish', topic: bytes as unknown as string, payload: '{"firmware_version":"6.6.6"}', qos: 1, retain: true, messageId, dup: false }))
        t.ok(await acked.then(() => true, () => false), `${name}: PUBACK`)
        const decoded = bytes.toString('utf8')
        t.ok(decoded.includes('\ufffd'), `${name}: decodes with U+FFFD`)
        const [report] = await eventually(() => { const r = errorReports(received, serial).slice(before); return r.length > 0 ? r : undefined }, 3000, 'the errors report')
          .catch(() => [] as ErrorReport[])
        t.match(report, { topic: decoded, reason: /only its own/, at: ISO_UTC }, `${name}: reported on the errors topic`)
        const lines = await logged(ts, mark, line => line.msg === 'device publish refused' && line.serial === serial, 'the refusal log line')
        t.match(lines, [{ level: 40, serial, topic: decoded, reason: /only its own/ }], `${name}: one warning with the topic and the reason`)
        t.ok(client.mqtt.connected, `${name}: the device stays connected`)
      }
    })

    t.same(await retainedTopics(ts, info), [], `${transport}: nothing retained on the device's own info topic`)
    await assertNothingRecorded(t, ts, serial)
  }
  await ts.server.settled()
  t.same(suspiciousDeliveries.map(named), [], 'nothing was delivered under a topic with a control character')
  await assertNothingRetainedSuspicious(t, ts)
  await assertStillServing(t, ts)
})

t.test('SUBSCRIBE to filters with NUL or a control character: SUBACK 0x80, logged', async (t) => {
  for (const [transport, url] of transports) {
    const { client } = await device(t, ts, url)
    const serial = client.serial
    const commands = deviceTopic(serial, 'commands')
    const filters = [
      `${commands}\u0000`,
      `${commands}\u0000x`,
      '\u0000',
      `shepherd/devices/${serial}\u0000/commands`,
      `${deviceTopic(serial, 'errors')}\u0001`,
      `${deviceTopic(serial, 'firmware')}\u007f`,
      `${commands}\r\n`
    ]
    for (const filter of filters) {
      await t.test(`${transport}: ${named(filter)}`, async (t) => {
        const mark = ts.logs.length
        t.same(await subackOf(client.mqtt, { [filter]: { qos: 1 } }), [128], 'SUBACK 0x80')
        const lines = await logged(ts, mark, line => line.msg === 'subscription refused' && line.serial === serial, 'the refusal log line')
        t.equal(lines.length, 1, 'one refusal logged')
        t.match(lines[0], { level: 40, serial, topic: filter, reason: /only its own commands, firmware, errors/ }, 'a warning with the serial, the filter and the reason')
        t.ok(client.mqtt.connected, 'the device stays connected')
      })
    }

    await t.test(`${transport}: a refused filter next to an allowed one`, async (t) => {
      t.same(await subackOf(client.mqtt, { [`${commands}\u0000`]: { qos: 1 }, [commands]: { qos: 1 } }), [128, 1], 'per-filter answers: 0x80, then QoS 1')
    })

    await t.test(`${transport}: ill-formed UTF-8 (raw SUBSCRIBE bytes)`, async (t) => {
      const cases: Array<[string, Buffer]> = [
        ['a lone 0xFF', Buffer.concat([Buffer.from(commands), Buffer.from([0xff])])],
        ['an overlong NUL (0xC0 0x80)', Buffer.concat([Buffer.from(commands), Buffer.from([0xc0, 0x80])])]
      ]
      for (const [index, [name, bytes]] of cases.entries()) {
        const mark = ts.logs.length
        const messageId = 61000 + index
        const suback = nextPacket(client, 'suback', messageId)
        writeRaw(client, rawSubscribe(messageId, bytes))
        t.same((await suback.catch(() => undefined) as { granted?: number[] } | undefined)?.granted, [128], `${name}: SUBACK 0x80`)
        const lines = await logged(ts, mark, line => line.msg === 'subscription refused' && line.serial === serial, 'the refusal log line')
        t.match(lines, [{ level: 40, serial, topic: bytes.toString('utf8'), reason: /only its own/ }], `${name}: one warning with the filter (U+FFFD for the bad bytes) and the reason`)
        t.ok(client.mqtt.connected, `${name}: the device stays connected`)
      }
    })

    const aedesClient = (ts.server.broker.aedes as unknown as { clients: Record<string, { subscriptions?: Record<string, unknown> }> }).clients[serial]
    t.same(Object.keys(aedesClient?.subscriptions ?? {}), [commands], `${transport}: the broker holds only the allowed subscription`)
  }
  await assertStillServing(t, ts)
})

t.test('a topic with a NUL that is malformed anyway (a wildcard out of place): the connection is closed, logged', async (t) => {
  // Aedes checks wildcards before the ACL: a '#' that is not last, or any wildcard in a PUBLISH, is a
  // protocol violation, and the connection is closed (MQTT 3.1.1 §4.8: the server closes on a
  // malformed packet). The warning names the client id, reason protocol_error and Aedes's words.
  for (const [transport, url] of transports) {
    const cases: Array<[string, (client: DeviceClient) => Buffer, RegExp]> = [
      ['SUBSCRIBE #<U+0000>', () => rawSubscribe(62000, Buffer.from('#\u0000')), /# is only allowed in SUBSCRIBE in the last position/],
      ['SUBSCRIBE +<U+0000>/x', () => rawSubscribe(62001, Buffer.from('+\u0000/x')), /\+ is only allowed in SUBSCRIBE between \//],
      ['PUBLISH info/#<U+0000>', (client) => mqttPacket.generate({ cmd: 'publish', topic: `${deviceTopic(client.serial, 'info')}/#\u0000`, payload: '{}', qos: 1, retain: true, messageId: 62002, dup: false }), /# is not allowed in PUBLISH/]
    ]
    for (const [name, packet, reason] of cases) {
      await t.test(`${transport}: ${name}`, async (t) => {
        const { client } = await device(t, ts, url)
        const serial = client.serial
        const mark = ts.logs.length
        const closed = new Promise<void>(resolve => { client.mqtt.once('close', () => { resolve() }) })
        writeRaw(client, packet(client))
        t.ok(await Promise.race([closed.then(() => true), new Promise(resolve => setTimeout(resolve, 3000, false))]), 'the server closed the connection')
        const lines = await logged(ts, mark, line => line.msg === 'MQTT connection closed: the client broke the protocol' && line.clientId === serial, 'the protocol error log line')
        t.match(lines, [{ level: 40, clientId: serial, reason: 'protocol_error', detail: reason }], 'a warning with the client id and the reason')
        const gone = await logged(ts, mark, line => line.msg === 'device disconnected' && line.serial === serial, 'the disconnect log line')
        t.match(gone, [{ serial, reason: 'lost' }], 'the device is disconnected (lost)')
      })
    }
  }
  await ts.server.settled()
  t.same(suspiciousDeliveries.map(named), [], 'nothing was delivered under a topic with a control character')
  await assertNothingRetainedSuspicious(t, ts)
  await assertStillServing(t, ts)
})

t.test('a CONNECT whose will topic has a NUL: accepted, the will dropped, logged and reported', async (t) => {
  for (const [transport, url] of transports) {
    for (const suffix of ['\u0000', '\u0000x', '\u0001']) {
      await t.test(`${transport}: ${named(`status${suffix}`)}`, async (t) => {
        const serial = uniqueSerial('will')
        const willTopic = `${deviceTopic(serial, 'status')}${suffix}`
        const mark = ts.logs.length
        const identity = await ts.pki.device(serial)
        const client = await connectDevice({
          url, identity, answerCommands: false,
          mqttOptions: { will: { topic: willTopic, payload: Buffer.from('{"status":"offline","reason":"lost"}'), qos: 1, retain: true } }
        })
        t.teardown(() => client.mqtt.end(true))
        t.pass('CONNACK 0: the device is accepted (the will is the server\'s to drop)')
        const lines = await logged(ts, mark, line => line.msg === 'device will refused' && line.serial === serial, 'the will log line')
        t.match(lines, [{ level: 40, serial, topic: willTopic, reason: /will/ }], 'one warning with the serial, the will topic and the reason')

        const received: Received[] = []
        client.mqtt.on('message', (topic, payload) => { received.push({ topic, payload: payload.toString() }) })
        await client.mqtt.subscribeAsync(deviceTopic(serial, 'errors'), { qos: 0 })
        const [report] = await eventually(() => { const r = errorReports(received, serial); return r.length > 0 ? r : undefined }, 3000, 'the will report')
          .catch(() => [] as ErrorReport[])
        t.match(report, { topic: willTopic, reason: /will/, at: ISO_UTC }, 'the dropped will is reported on the errors topic')

        // the connection drops: the server publishes its own offline/lost status, never the will
        client.mqtt.stream.destroy()
        await eventually(async () => (await ts.api('GET', `/api/devices/${serial}`)).body?.status === 'offline', 5000, 'the device offline')
        await ts.server.settled()
        t.same(await retainedTopics(ts, `shepherd/devices/${serial}/#`), [deviceTopic(serial, 'status')], 'only the server\'s own status is retained for the device')
      })
    }
  }
  t.same(suspiciousDeliveries.map(named), [], 'no will was published under a topic with a control character')
  await assertNothingRetainedSuspicious(t, ts)
  await assertStillServing(t, ts)
})

t.test('no unhandled rejection', async (t) => {
  await new Promise(resolve => setTimeout(resolve, 100)) // let late rejections surface
  t.same(unhandled, [], 'none')
})
