// Two Shepherd nodes sharing Redis and PostgreSQL act as one broker: a device moving between
// nodes is taken over, a revocation on one node kicks the device on the other, and rows left
// online by a node that stopped heart-beating are swept.
import t from 'tap'
import { retainedJson } from '../helpers/retained.js'
import { connectDevice } from '../../src/device-client/device-client.js'
import { createTestDatabase, startTestServer, eventually, type TestServer } from '../helpers/server.js'
import { createTestPki, uniqueSerial } from '../helpers/pki.js'

const retainedStatus = (node: TestServer, serial: string): Promise<Record<string, unknown> | undefined> => retainedJson(node, `shepherd/devices/${serial}/status`)

async function row (node: TestServer, serial: string): Promise<Record<string, unknown>> {
  return await node.server.db.knex('devices').where({ serial }).first() as Record<string, unknown>
}

t.test('two nodes on one Redis and one PostgreSQL', async (t) => {
  const database = await createTestDatabase()
  const pki = await createTestPki()
  const a = await startTestServer(t, { databaseUrl: database.url, pki, redis: true, heartbeatIntervalMs: 200 })
  const b = await startTestServer(t, { databaseUrl: database.url, pki, redis: true, heartbeatIntervalMs: 200 })
  t.teardown(async () => {
    await Promise.all([a.close(), b.close()])
    await database.drop()
  })
  const serial = uniqueSerial('cluster')
  const identity = await pki.device(serial)

  const first = await connectDevice({ url: a.wsUrl, identity })
  await eventually(async () => (await row(b, serial))?.status === 'online', 5000, 'online in the shared registry')
  t.equal((await row(b, serial)).node_id, a.server.nodeId, 'held by node A')

  const firstClosed = new Promise<void>(resolve => first.mqtt.once('close', () => resolve()))
  // a reconnect signs a new timestamp: the server accepts each (serial, timestamp) once
  const second = await connectDevice({ url: b.mqttUrl, identity, timestamp: Math.floor(Date.now() / 1000) + 1 })
  await firstClosed
  t.pass('connecting on node B closed the session on node A')
  await eventually(async () => (await row(a, serial)).node_id === b.server.nodeId, 5000, 'row moves to node B')
  await a.server.settled()
  await b.server.settled()
  t.match(await row(a, serial), { status: 'online', node_id: b.server.nodeId })
  t.match(await eventually(async () => {
    const status = await retainedStatus(a, serial)
    return status?.status === 'online' ? status : undefined
  }), { status: 'online' }, 'the last retained status, shared through Redis, is online')

  // a command issued on node A while the row says offline (the device has just connected to B)
  const commands: string[] = []
  second.mqtt.on('message', (topic, payload) => { if (topic.endsWith('/commands')) commands.push(JSON.parse(payload.toString()).id) })
  await second.mqtt.subscribeAsync(`shepherd/devices/${serial}/commands`, { qos: 1 })
  await a.server.db.knex('devices').where({ serial }).update({ status: 'offline' })
  const queued = await a.api('POST', `/api/devices/${serial}/commands`, { body: { command: 'identify' } })
  t.equal(queued.body.state, 'queued')
  await eventually(() => commands.includes(queued.body.id), 3000, 'node B delivered the command queued on node A')
  await a.server.db.knex('devices').where({ serial }).update({ status: 'online' })

  const secondClosed = new Promise<void>(resolve => second.mqtt.once('close', () => resolve()))
  const revokedAt = Date.now()
  await a.server.revokeDevice(serial)
  await secondClosed
  t.ok(Date.now() - revokedAt < 1000, 'revoking on node A kicked the device on node B within a second')
  t.match(await eventually(async () => {
    const current = await row(a, serial)
    return current.status === 'offline' ? current : undefined
  }), { status: 'offline', disconnect_reason: 'revoked', revoked: true })
  await second.close()

  // a node that died leaves its devices online; the others sweep them once it misses heartbeats
  const orphan = uniqueSerial('orphan')
  await a.server.db.knex('devices').insert({ serial: orphan, status: 'online', node_id: 'a-node-that-died', connected_at: new Date() })
  t.match(await eventually(async () => {
    const current = await row(a, orphan)
    return current.status === 'offline' ? current : undefined
  }, 5000, 'sweep of the dead node'), { status: 'offline', disconnect_reason: 'lost', node_id: null })
  t.match(await eventually(async () => await retainedStatus(b, orphan)), { status: 'offline', reason: 'lost' })
})
