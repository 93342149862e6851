// Presence in every disconnect case, on both databases: the retained `status` topic (value and
// reason), the `devices` row and GET /api/health, against a real server and real MQTT clients.
import t from 'tap'
import type { Test } from 'tap'
import type { Readable } from 'node:stream'
import net from 'node:net'
import { once } from 'node:events'
import pg from 'pg'
import mqttPacket from 'mqtt-packet'
import { connectDevice, devicePassword, type DeviceClient } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import type { Device } from '../../src/devices/types.js'
import { DATABASES, eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

interface StatusMessage { status: 'online' | 'offline', reason?: string, at: string }

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/

function parseStatus (payload: Buffer | string): StatusMessage {
  return JSON.parse(payload.toString()) as StatusMessage
}

/** The retained value of a topic, read from the broker's retained store. */
async function retained (ts: TestServer, topic: string): Promise<StatusMessage | undefined> {
  const persistence = (ts.server.broker.aedes as unknown as { persistence: { createRetainedStreamCombi (patterns: string[]): Readable } }).persistence
  let found: StatusMessage | undefined
  for await (const packet of persistence.createRetainedStreamCombi([topic]) as AsyncIterable<{ topic: string, payload: Buffer }>) {
    if (packet.topic === topic) found = parseStatus(packet.payload)
  }
  return found
}

/** Every message published on the device's status topic from now on (live, in process). */
function watchStatus (t: Test, ts: TestServer, serial: string): StatusMessage[] {
  const seen: StatusMessage[] = []
  const topic = deviceTopic(serial, 'status')
  const handler = (packet: { payload: Buffer | string }, callback: () => void): void => {
    seen.push(parseStatus(packet.payload))
    callback()
  }
  ts.server.broker.aedes.subscribe(topic, handler, () => {})
  t.teardown(() => { if (!ts.server.broker.aedes.closed) ts.server.broker.aedes.unsubscribe(topic, handler, () => {}) })
  return seen
}

async function row (ts: TestServer, serial: string): Promise<Device> {
  const found = await ts.server.db.knex<Device>('devices').where({ serial }).first()
  if (found === undefined) throw new Error(`no devices row for ${serial}`)
  return found
}

async function onlineDevices (ts: TestServer): Promise<number> {
  const response = await fetch(`${ts.httpUrl}/api/health`)
  const body = await response.json() as { status: string, online_devices: number }
  if (response.status !== 200 || body.status !== 'ok') throw new Error(`health answered ${response.status} ${JSON.stringify(body)}`)
  return body.online_devices
}

/** Waits until the retained status is `expected` (status + reason) and answers it. */
async function retainedBecomes (ts: TestServer, serial: string, status: 'online' | 'offline', reason?: string): Promise<StatusMessage> {
  return await eventually(async () => {
    const value = await retained(ts, deviceTopic(serial, 'status'))
    return value?.status === status && value.reason === reason ? value : undefined
  }, 5000, `retained status ${status}/${reason ?? '-'} of ${serial}`)
}

/** Asserts the row and the retained status agree on an offline device with `reason`. */
async function assertOffline (t: Test, ts: TestServer, serial: string, reason: string, seen: StatusMessage[]): Promise<void> {
  const status = await retainedBecomes(ts, serial, 'offline', reason)
  await ts.server.settled()
  t.match(status, { status: 'offline', reason, at: ISO_UTC }, 'retained status is offline with the reason')
  const device = await row(ts, serial)
  t.equal(device.status, 'offline', 'row status offline')
  t.equal(device.disconnect_reason, reason, 'row disconnect_reason')
  t.equal(device.node_id, null, 'row node_id cleared')
  t.equal(device.connection_id, null, 'row connection_id cleared')
  t.ok(device.last_seen_at instanceof Date, 'row last_seen_at set')
  t.equal(device.last_seen_at?.getTime(), new Date(status.at).getTime(), 'last_seen_at is the status message\'s time')
  t.equal(device.disconnected_at?.getTime(), new Date(status.at).getTime(), 'disconnected_at is the status message\'s time')
  t.ok(device.connected_at !== null && device.connected_at.getTime() <= device.last_seen_at!.getTime(), 'connected_at kept, not after the disconnect')
  t.same(seen.map(m => m.status), ['online', 'offline'], 'exactly one online then one offline message on the topic')
  t.equal(seen.at(-1)?.reason, reason, 'the live offline message carries the reason')
  t.equal(await onlineDevices(ts), 0, 'health counts no online device')
}

/** Connects a device and asserts online everywhere; answers the device and the watched messages. */
async function connectOnline (t: Test, ts: TestServer, serial: string, options: { keepaliveSeconds?: number, timestamp?: number } = {}): Promise<{ device: DeviceClient, seen: StatusMessage[] }> {
  const seen = watchStatus(t, ts, serial)
  const before = Date.now()
  // an explicit, older timestamp, so that a reconnect "now" can never repeat it (a replay is refused)
  const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), timestamp: Math.floor(Date.now() / 1000) - 20, ...options })
  t.teardown(() => device.mqtt.end(true))
  const status = await retainedBecomes(ts, serial, 'online')
  await ts.server.settled()
  t.match(status, { status: 'online', at: ISO_UTC }, 'retained status online, no reason')
  t.notOk('reason' in status, 'an online status has no reason field')
  const device_ = await row(ts, serial)
  t.equal(device_.status, 'online', 'row status online')
  t.equal(device_.node_id, ts.server.nodeId, 'row node_id is this node')
  t.equal(device_.disconnect_reason, null, 'row disconnect_reason cleared')
  t.ok(device_.connection_id, 'row has a connection id')
  t.ok(device_.connected_at !== null && device_.connected_at.getTime() >= before - 1000, 'row connected_at is now')
  t.equal(device_.connected_at?.getTime(), new Date(status.at).getTime(), 'connected_at is the status message\'s time')
  t.equal(device_.last_seen_at?.getTime(), new Date(status.at).getTime(), 'last_seen_at is the status message\'s time')
  t.equal(await onlineDevices(ts), 1, 'health counts the device')
  return { device, seen }
}

function closed (device: DeviceClient): Promise<void> {
  return new Promise(resolve => {
    if (device.mqtt.disconnected || !device.mqtt.connected) { resolve(); return }
    device.mqtt.once('close', () => resolve())
  })
}

for (const database of DATABASES) {
  t.test(`presence on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })

    t.test('connect → online, clean DISCONNECT → offline/clean', async (t) => {
      const serial = uniqueSerial('clean')
      const { device, seen } = await connectOnline(t, ts, serial)
      await device.close() // sends DISCONNECT
      await assertOffline(t, ts, serial, 'clean', seen)
    })

    t.test('socket dropped without DISCONNECT → offline/lost', async (t) => {
      const serial = uniqueSerial('drop')
      const { device, seen } = await connectOnline(t, ts, serial)
      device.mqtt.stream.destroy()
      await assertOffline(t, ts, serial, 'lost', seen)
    })

    t.test('keepalive timeout → offline/lost', async (t) => {
      const serial = uniqueSerial('keepalive')
      const { device, seen } = await connectOnline(t, ts, serial, { keepaliveSeconds: 1 })
      let timedOut = false
      const onTimeout = (client: { id: string }): void => { if (client.id === serial) timedOut = true }
      ts.server.broker.aedes.on('keepaliveTimeout', onTimeout)
      t.teardown(() => { ts.server.broker.aedes.off('keepaliveTimeout', onTimeout) })
      // The client goes silent but keeps its socket open: only the server's keepalive can end it.
      device.mqtt.keepaliveManager.destroy()
      const silentSince = Date.now()
      await closed(device)
      const silentFor = Date.now() - silentSince
      t.ok(timedOut, 'the broker timed the client out on keepalive')
      t.ok(silentFor >= 1000 && silentFor < 4000, `closed after 1.5× keepalive (${silentFor} ms)`)
      await assertOffline(t, ts, serial, 'lost', seen)
    })

    t.test('takeover by a second connection → first offline/taken_over, then online again', async (t) => {
      const serial = uniqueSerial('takeover')
      const { device: first, seen } = await connectOnline(t, ts, serial)
      const firstRow = await row(ts, serial)
      const firstClosed = closed(first)
      // a reconnect signs a new timestamp (the same one would be refused as a replay)
      const second = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(serial), timestamp: Math.floor(Date.now() / 1000) - 5 })
      t.teardown(() => second.mqtt.end(true))
      await firstClosed
      t.pass('the first connection was closed by the server')
      await eventually(() => seen.length >= 3, 5000, 'three status messages')
      await ts.server.settled()
      t.same(seen.map(m => [m.status, m.reason]), [['online', undefined], ['offline', 'taken_over'], ['online', undefined]],
        'online, offline/taken_over, online — in that order')
      const final = await retained(ts, deviceTopic(serial, 'status'))
      t.match(final, { status: 'online' }, 'the retained status is online')
      t.notOk(final !== undefined && 'reason' in final, 'without a reason')
      const device = await row(ts, serial)
      t.equal(device.status, 'online', 'row online')
      t.equal(device.node_id, ts.server.nodeId, 'row held by this node')
      t.equal(device.disconnect_reason, null, 'row disconnect_reason cleared')
      t.not(device.connection_id, firstRow.connection_id, 'row holds the new connection')
      t.ok(device.connected_at!.getTime() >= firstRow.connected_at!.getTime(), 'connected_at of the new connection')
      t.equal(device.connected_at?.getTime(), new Date(final!.at).getTime(), 'connected_at is the final status message\'s time')
      t.ok(second.mqtt.connected, 'the second connection stays connected')
      t.equal(await onlineDevices(ts), 1, 'health counts the device once')
      await second.close()
      await assertOfflineAfterTakeover(t, ts, serial, seen)
    })

    t.test('a connection of the same serial that goes away during authentication takes nothing over', async (t) => {
      const serial = uniqueSerial('ghost')
      const identity = await ts.pki.device(serial)
      const { device, seen } = await connectOnline(t, ts, serial)
      // observe when the server has decided on the next connection's credentials
      const aedes = ts.server.broker.aedes
      const authenticate = aedes.authenticate
      t.teardown(() => { aedes.authenticate = authenticate })
      const decided = new Promise<{ error: unknown, ok: boolean | null }>((resolve) => {
        aedes.authenticate = (client, username, password, done) => {
          authenticate.call(aedes, client, username, password, (error, ok) => {
            done(error, ok)
            if (client.id === serial) resolve({ error, ok })
          })
        }
      })
      // a raw CONNECT with a valid credential, the socket closed right after it is sent: the server
      // authenticates a client that is already gone
      const socket = net.connect(Number(new URL(ts.mqttUrl).port), '127.0.0.1')
      await once(socket, 'connect')
      const connect = mqttPacket.generate({
        cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 30,
        clientId: serial, username: serial, password: Buffer.from(devicePassword(identity, { timestamp: Math.floor(Date.now() / 1000) - 7 }))
      })
      await new Promise<void>(resolve => socket.write(connect, () => resolve()))
      socket.resetAndDestroy() // a TCP reset: the server learns at once that the client is gone
      t.same(await decided, { error: null, ok: true }, 'the vanished connection\'s credentials were accepted')
      t.ok(device.mqtt.connected, 'the first connection is still up')
      t.equal(aedes.connectedClients, 1, 'the broker holds one connection')
      await device.close()
      const offline = await eventually(async () => {
        const value = await retained(ts, deviceTopic(serial, 'status'))
        return value?.status === 'offline' ? value : undefined
      }, 5000, 'offline status')
      t.equal(offline.reason, 'clean', 'the first connection\'s clean DISCONNECT is reported as clean, not as a takeover')
      await assertOffline(t, ts, serial, 'clean', seen)
    })

    t.test('revocation → offline/revoked, and the device cannot reconnect (CONNACK 5)', async (t) => {
      const serial = uniqueSerial('revoke')
      const { device, seen } = await connectOnline(t, ts, serial)
      const deviceClosed = closed(device)
      t.same(await ts.server.revokeDevice(serial), { found: true }, 'revokeDevice found the device')
      await deviceClosed
      t.pass('the server closed the revoked device\'s connection')
      await assertOffline(t, ts, serial, 'revoked', seen)
      t.equal((await row(ts, serial)).revoked, true, 'row revoked')
      const refusal = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), timestamp: Math.floor(Date.now() / 1000) - 5 })
        .then(d => { d.mqtt.end(true); return undefined }, (error: Error & { code?: number }) => error)
      t.equal(refusal?.code, 5, 'reconnect refused with CONNACK 5 (not authorized)')
      t.ok(ts.logs.some(line => line.msg === 'device connection refused' && line.serial === serial && line.reason === 'revoked'), 'the refusal is logged with the serial and reason revoked')
      await ts.server.settled()
      t.same(seen.map(m => m.status), ['online', 'offline'], 'the refused reconnect published no status')
      t.equal((await row(ts, serial)).status, 'offline', 'row still offline')
    })

    t.test('revoking an unknown device answers found: false', async (t) => {
      t.same(await ts.server.revokeDevice(uniqueSerial('nobody')), { found: false })
    })

    t.test('server shutdown → offline/server_shutdown, published before the broker closes', async (t) => {
      const serial = uniqueSerial('shutdown')
      const { device, seen } = await connectOnline(t, ts, serial)
      const deviceClosed = closed(device)
      // Read the row from inside the delivery of the shutdown status (the publish waits for this
      // handler), so the database is certainly still open — PGlite here lives in memory only.
      let atPublish: { brokerClosed: boolean, row: Device | undefined } | undefined
      const topic = deviceTopic(serial, 'status')
      ts.server.broker.aedes.subscribe(topic, (packet, callback) => {
        const message = parseStatus(packet.payload)
        if (message.status !== 'offline') { callback(); return }
        const brokerClosed = ts.server.broker.aedes.closed
        ts.server.db.knex<Device>('devices').where({ serial }).first().then((found) => {
          atPublish = { brokerClosed, row: found }
          callback()
        }, () => { callback() })
      }, () => {})
      const errorsBefore = ts.logs.filter(line => Number(line.level) >= 50).length
      await ts.server.close()
      await deviceClosed
      t.pass('the device connection was closed')
      t.same(seen.map(m => [m.status, m.reason]), [['online', undefined], ['offline', 'server_shutdown']], 'status messages: online, offline/server_shutdown')
      t.equal(atPublish?.brokerClosed, false, 'the status was published while the broker was still open')
      t.match(atPublish?.row, { status: 'offline', disconnect_reason: 'server_shutdown', node_id: null, connection_id: null }, 'row offline/server_shutdown when the status went out')
      t.equal(atPublish?.row?.last_seen_at?.getTime(), new Date(seen[1]!.at).getTime(), 'last_seen_at is the status message\'s time')
      const errors = ts.logs.filter(line => Number(line.level) >= 50).slice(errorsBefore)
      t.same(errors, [], 'shutdown logged no errors')
      t.match(ts.logs.filter(line => line.msg === 'device disconnected' && line.serial === serial), [{ reason: 'server_shutdown' }], 'the disconnect is logged as the shutdown it was')
      if (ts.databaseUrl !== undefined) {
        const client = new pg.Client({ connectionString: ts.databaseUrl })
        await client.connect()
        t.teardown(() => client.end())
        const { rows } = await client.query<{ status: string, disconnect_reason: string, node_id: string | null }>(
          'SELECT status, disconnect_reason, node_id FROM devices WHERE serial = $1', [serial])
        t.same(rows, [{ status: 'offline', disconnect_reason: 'server_shutdown', node_id: null }], 'the stored row after shutdown')
      }
    })
  })
}

/** After a takeover and a clean close of the second connection: offline/clean, four messages. */
async function assertOfflineAfterTakeover (t: Test, ts: TestServer, serial: string, seen: StatusMessage[]): Promise<void> {
  const status = await retainedBecomes(ts, serial, 'offline', 'clean')
  await ts.server.settled()
  t.equal(seen.length, 4, 'one more status message: offline/clean')
  const device = await row(ts, serial)
  t.match(device, { status: 'offline', disconnect_reason: 'clean', node_id: null }, 'row offline/clean')
  t.equal(device.last_seen_at?.getTime(), new Date(status.at).getTime(), 'last_seen_at is the status message\'s time')
  t.equal(await onlineDevices(ts), 0, 'health counts no online device')
}
