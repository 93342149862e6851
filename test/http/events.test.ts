// GET /api/events: Server-Sent Events from real devices over real HTTP streams — online, info and
// offline events, serial and type filters, authentication, heartbeats, a server closing with
// streams open, and events crossing nodes through Redis.
import t from 'tap'
import { connectDevice } from '../../src/device-client/device-client.js'
import { eventually, startTestServer } from '../helpers/server.js'
import { createTestPki, uniqueSerial } from '../helpers/pki.js'
import { isEvent, openEvents, type EventStream } from '../helpers/sse.js'

t.test('live events over SSE', async (t) => {
  const ts = await startTestServer(t, { sseHeartbeatMs: 100 })

  t.test('online, info and offline of a real device, in order', async (t) => {
    const stream = await openEvents(t, ts)
    t.equal(stream.status, 200)
    t.match(stream.headers['content-type'], /^text\/event-stream/)
    t.equal(stream.headers['cache-control'], 'no-cache')

    const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(uniqueSerial('sse')), answerCommands: false })
    const serial = device.serial
    const online = await stream.waitFor('device.online', isEvent('device.online', serial))
    t.match(online.data, { serial, at: /^\d{4}-\d{2}-\d{2}T.*Z$/ })

    await device.publishInfo({ firmware_version: '2.0.0', firmware_target: 'rpi4', location: 'lab' })
    const info = await stream.waitFor('device.info', isEvent('device.info', serial))
    t.same(info.data, { serial, firmware_version: '2.0.0', firmware_target: 'rpi4', metadata: { location: 'lab' } })

    await device.close()
    const offline = await stream.waitFor('device.offline', isEvent('device.offline', serial))
    t.match(offline.data, { serial, reason: 'clean', at: /Z$/ })

    const types = stream.frames.filter(frame => frame.data?.serial === serial).map(frame => frame.event)
    t.same(types, ['device.online', 'device.info', 'device.offline'], 'in the order they happened')
    t.ok(stream.frames.every(frame => frame.event === undefined || typeof frame.data?.serial === 'string'), 'every event\'s data has a serial')
  })

  t.test('filters by serial and by type (comma-separated lists)', async (t) => {
    const [one, two, three] = await Promise.all([1, 2, 3].map(async () => await ts.pki.device(uniqueSerial('filter'))))
    const bySerial = await openEvents(t, ts, `?serial=${one!.serial},${three!.serial}`)
    const byType = await openEvents(t, ts, '?type=device.offline,command.reply')
    const both = await openEvents(t, ts, `?serial=${two!.serial}&type=device.online`)

    for (const identity of [one!, two!, three!]) {
      const device = await connectDevice({ url: ts.mqttUrl, identity, answerCommands: false })
      await device.close()
    }
    await bySerial.waitFor('offline of the third device', isEvent('device.offline', three!.serial))
    await byType.waitFor('offline of the third device', isEvent('device.offline', three!.serial))
    await both.waitFor('online of the second device', isEvent('device.online', two!.serial))
    await ts.server.settled()
    await new Promise(resolve => setTimeout(resolve, 100)) // any stray event would have arrived

    const events = (stream: EventStream): string[] => stream.frames.filter(frame => frame.event !== undefined).map(frame => `${frame.event} ${frame.data.serial}`)
    t.same(events(bySerial), [
      `device.online ${one!.serial}`, `device.offline ${one!.serial}`, `device.online ${three!.serial}`, `device.offline ${three!.serial}`
    ], 'only the listed serials')
    t.same(events(byType), [`device.offline ${one!.serial}`, `device.offline ${two!.serial}`, `device.offline ${three!.serial}`], 'only the listed types')
    t.same(events(both), [`device.online ${two!.serial}`], 'both filters apply')
  })

  t.test('needs a token', async (t) => {
    const missing = await openEvents(t, ts, '', null)
    t.equal(missing.status, 401)
    t.equal(missing.body.error, 'unauthorized')
    const wrong = await openEvents(t, ts, '', 'not-a-token')
    t.equal(wrong.status, 401)
  })

  t.test('an unknown type or a malformed serial is a 400 naming the field', async (t) => {
    const type = await openEvents(t, ts, '?type=device.online,device.exploded')
    t.equal(type.status, 400)
    t.match(type.body, { error: 'invalid_request', field: 'type', message: /device\.exploded/ })
    const serial = await openEvents(t, ts, '?serial=ok,not%20valid')
    t.equal(serial.status, 400)
    t.match(serial.body, { error: 'invalid_request', field: 'serial' })
    const other = await openEvents(t, ts, '?since=1')
    t.match(other.body, { error: 'invalid_request', field: 'since' }, 'unknown parameters are refused')
  })

  t.test('heartbeat comments keep an idle stream alive', async (t) => {
    const stream = await openEvents(t, ts)
    await stream.waitFor('two heartbeats', () => stream.frames.filter(frame => frame.comment === 'heartbeat').length >= 2, 2000)
    t.pass('heartbeats arrive at the configured interval')
  })

  t.test('a client that goes away is unsubscribed', async (t) => {
    await eventually(() => ts.server.events.listenerCount() === 0, 2000, 'earlier streams closed')
    const streams = await Promise.all([openEvents(t, ts), openEvents(t, ts)])
    t.equal(ts.server.events.listenerCount(), 2, 'one listener per open stream')
    streams[0].close()
    await eventually(() => ts.server.events.listenerCount() === 1, 2000, 'the listener of the closed stream removed')
    streams[1].close()
    await eventually(() => ts.server.events.listenerCount() === 0, 2000, 'no listener left')
    const head = await ts.server.http.inject({ method: 'HEAD', url: '/api/events', headers: { authorization: `Bearer ${ts.apiToken}` } })
    t.equal(head.statusCode, 404, 'no HEAD route (its stream would stay subscribed)')
    t.equal(ts.server.events.listenerCount(), 0, 'no listener left')
  })
})

t.test('closing the server ends open streams instead of hanging', async (t) => {
  const ts = await startTestServer(t)
  const streams = await Promise.all([openEvents(t, ts), openEvents(t, ts, '?type=device.offline')])
  const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(uniqueSerial('shutdown')), answerCommands: false })
  await streams[0].waitFor('device.online', isEvent('device.online', device.serial))
  const started = Date.now()
  await ts.close()
  t.ok(Date.now() - started < 5000, `closed in ${Date.now() - started} ms`)
  await Promise.all(streams.map(stream => stream.ended))
  t.pass('the streams ended')
  device.mqtt.end(true)
})

t.test('events reach SSE clients on every node (Redis)', async (t) => {
  // the nodes share Redis only (each its own embedded database): events travel through Redis
  const pki = await createTestPki()
  const a = await startTestServer(t, { pki, redis: true })
  const b = await startTestServer(t, { pki, redis: true })
  const onA = await openEvents(t, a)
  const onB = await openEvents(t, b)
  const device = await connectDevice({ url: b.mqttUrl, identity: await pki.device(uniqueSerial('nodes')), answerCommands: false })
  await onA.waitFor('device.online on node A', isEvent('device.online', device.serial))
  await device.close()
  await onA.waitFor('device.offline on node A', isEvent('device.offline', device.serial))
  await onB.waitFor('device.offline on node B', isEvent('device.offline', device.serial))
  t.equal(onA.frames.filter(isEvent('device.online', device.serial)).length, 1, 'once on node A')
  t.equal(onB.frames.filter(isEvent('device.online', device.serial)).length, 1, 'once on node B')
})
