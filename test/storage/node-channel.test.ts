// The announcement listener (PostgreSQL LISTEN) after its database connection is lost for longer
// than its first retry: it keeps trying until the database is back, then catches up on what was
// announced while it was away (NOTIFY is not kept for absent listeners): a device revoked meanwhile
// is kicked, a command queued meanwhile by the CLI is delivered; and later announcements arrive again.
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t from 'tap'
import { connectDevice, type DeviceClient } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { runShepherd } from '../helpers/cli.js'
import { uniqueSerial } from '../helpers/pki.js'
import { createTestDatabase, eventually, startTestServer } from '../helpers/server.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'

t.test('the listener reconnects after an outage and catches up on missed announcements', { timeout: 90_000 }, async (t) => {
  const database = await createTestDatabase()
  const proxy = await startTcpProxy(new URL(database.url))
  t.teardown(async () => { await proxy.cut(); await database.drop() })
  const ts = await startTestServer(t, { databaseUrl: proxy.url }) // closed first: teardowns run last-in first-out
  const direct = new pg.Client({ connectionString: database.url }) // the CLI's and other nodes' way in, not cut
  await direct.connect()
  t.teardown(() => direct.end())

  const connect = async (name: string): Promise<{ device: DeviceClient, closed: Promise<void> }> => {
    const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(uniqueSerial(name)) })
    t.teardown(() => device.close())
    return { device, closed: new Promise(resolve => { device.mqtt.once('close', () => { resolve() }) }) }
  }
  const revoked = await connect('missed-revoke')
  const commanded = await connect('missed-command')
  const later = await connect('later-revoke')
  const commands: string[] = []
  commanded.device.mqtt.on('message', (topic, payload) => { if (topic === deviceTopic(commanded.device.serial, 'commands')) commands.push(JSON.parse(payload.toString()).command) })
  await ts.server.settled()

  await proxy.cut()
  await eventually(() => ts.logs.some(line => line.msg === 'announcement listener reconnect failed'), 5000, 'a failed reconnect')
  // announced while the listener is away: lost to it
  await direct.query('UPDATE devices SET revoked = true WHERE serial = $1', [revoked.device.serial])
  await direct.query('SELECT pg_notify($1, $2)', ['shepherd_device_revoked', revoked.device.serial])
  const issued = await runShepherd(['command', commanded.device.serial, 'identify'], { env: { DATABASE_URL: database.url } })
  t.equal(issued.code, 0, issued.stderr)
  await sleep(2500) // past the second retry too
  t.ok(revoked.device.mqtt.connected, 'nothing reached the node during the outage')
  const health = await ts.api('GET', '/api/health', { token: null })
  t.match(health, { status: 503, body: { error: 'service_unavailable', message: /database/ } }, 'health says the node cannot serve')
  t.same(commands, [])

  await proxy.restore()
  await eventually(() => ts.logs.some(line => line.msg === 'announcement listener reconnected'), 40_000, 'the listener back')
  await revoked.closed
  t.pass('the device revoked during the outage is kicked once the listener is back')
  await eventually(() => commands.length > 0, 5000, 'the missed command delivered')
  t.same(commands, ['identify'])
  t.ok(later.device.mqtt.connected)

  await direct.query('UPDATE devices SET revoked = true WHERE serial = $1', [later.device.serial])
  await direct.query('SELECT pg_notify($1, $2)', ['shepherd_device_revoked', later.device.serial])
  await later.closed
  t.pass('announcements reach the node again')
  t.ok(commanded.device.mqtt.connected, 'other devices stay')
  await ts.server.settled()
  t.match(await ts.api('GET', '/api/health', { token: null }), { status: 200, body: { status: 'ok', online_devices: 1 } }, 'the one device left')
})
