// Rows left `online` by a node that died are swept offline (reason `lost`) when a server starts:
// a real `shepherd start` process holds a device and is SIGKILLed (no shutdown runs), then a new
// server starts on the same database. Also rows seeded directly (a foreign node id, no node id).
import t from 'tap'
import type { Test } from 'tap'
import { once } from 'node:events'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { Writable, type Readable } from 'node:stream'
import pg from 'pg'
import { connectDevice } from '../../src/device-client/device-client.js'
import { loadConfig } from '../../src/config.js'
import { createLogger } from '../../src/logger.js'
import { createServer, type ShepherdServer } from '../../src/server.js'
import { deviceTopic } from '../../src/topics.js'
import type { Device } from '../../src/devices/types.js'
import { createTestDatabase, DATABASES, eventually, startTestServer, type DatabaseChoice } from '../helpers/server.js'
import { createTestPki, uniqueSerial, type TestPki } from '../helpers/pki.js'
import { spawnShepherdServer } from '../helpers/cli.js'


interface StatusMessage { status: string, reason?: string, at: string }

/** A server as the tests here need it: the helper's (PostgreSQL), or one on an on-disk PGlite. */
interface Running {
  server: ShepherdServer
  httpUrl: string
  wsUrl: string
  logs: Array<Record<string, unknown>>
}

async function retainedStatus (server: ShepherdServer, serial: string): Promise<StatusMessage | undefined> {
  const topic = deviceTopic(serial, 'status')
  const persistence = (server.broker.aedes as unknown as { persistence: { createRetainedStreamCombi (patterns: string[]): Readable } }).persistence
  let found: StatusMessage | undefined
  for await (const packet of persistence.createRetainedStreamCombi([topic]) as AsyncIterable<{ topic: string, payload: Buffer }>) {
    if (packet.topic === topic) found = JSON.parse(packet.payload.toString()) as StatusMessage
  }
  return found
}

async function onlineDevices (httpUrl: string): Promise<number> {
  return ((await (await fetch(`${httpUrl}/api/health`)).json()) as { online_devices: number }).online_devices
}

/** The helper always keeps PGlite in memory; a restart on PGlite needs its files in DATA_DIR. */
async function startOnDiskPglite (t: Test, dataDir: string, caPath: string): Promise<Running> {
  const logs: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') logs.push(JSON.parse(line) as Record<string, unknown>)
      callback()
    }
  })
  const config = loadConfig({ DATA_DIR: dataDir, FLEET_CA_PATH: caPath, HOST: '127.0.0.1', LOG_LEVEL: 'debug' })
  const server = await createServer(config, { logger: createLogger('debug', sink) })
  t.teardown(() => server.close())
  const { httpPort } = await server.listen({ http: 0, mqtt: 0 })
  return { server, logs, httpUrl: `http://127.0.0.1:${httpPort}`, wsUrl: `ws://127.0.0.1:${httpPort}/mqtt` }
}

async function startAgain (t: Test, database: DatabaseChoice, where: { dataDir: string, caPath: string, databaseUrl?: string }, pki: TestPki): Promise<Running> {
  if (database === 'pglite') return await startOnDiskPglite(t, where.dataDir, where.caPath)
  const ts = await startTestServer(t, { databaseUrl: where.databaseUrl, pki })
  return { server: ts.server, httpUrl: ts.httpUrl, wsUrl: ts.wsUrl, logs: ts.logs }
}

for (const database of DATABASES) {
  t.test(`a node killed while holding a device leaves it online; the next server sweeps it to offline/lost (${database})`, async (t) => {
    const pki = await createTestPki()
    const dataDir = await mkdtemp(path.join(tmpdir(), 'shepherd-sweep-'))
    t.teardown(() => rm(dataDir, { recursive: true, force: true }))
    const caPath = path.join(dataDir, 'fleet_ca.pem')
    await writeFile(caPath, pki.caPem)
    let databaseUrl: string | undefined
    if (database === 'postgres') {
      const created = await createTestDatabase()
      t.teardown(() => created.drop())
      databaseUrl = created.url
    }

    const dead = await spawnShepherdServer(t, { DATA_DIR: dataDir, FLEET_CA_PATH: caPath, ...(databaseUrl === undefined ? {} : { DATABASE_URL: databaseUrl }) })
    const serial = uniqueSerial('swept')
    const device = await connectDevice({ url: `ws://127.0.0.1:${dead.httpPort}/mqtt`, identity: await pki.device(serial) })
    t.teardown(() => device.mqtt.end(true))
    await eventually(async () => await onlineDevices(`http://127.0.0.1:${dead.httpPort}`) === 1, 5000, 'the device online on the first node')
    dead.child.kill('SIGKILL')
    await once(dead.child, 'exit')
    t.equal(dead.child.signalCode, 'SIGKILL', 'the first node died without shutting down')

    if (databaseUrl !== undefined) {
      const client = new pg.Client({ connectionString: databaseUrl })
      await client.connect()
      const { rows } = await client.query<{ status: string, node_id: string }>('SELECT status, node_id FROM devices WHERE serial = $1', [serial])
      await client.end()
      t.same(rows, [{ status: 'online', node_id: dead.nodeId }], 'the dead node left the row online, held by it')
    }

    const next = await startAgain(t, database, { dataDir, caPath, databaseUrl }, pki)
    const row = await next.server.db.knex<Device>('devices').where({ serial }).first()
    t.match(row, { status: 'offline', disconnect_reason: 'lost', node_id: null, connection_id: null }, 'row swept to offline/lost at start')
    t.ok(row?.disconnected_at instanceof Date && row.disconnected_at.getTime() > row.connected_at!.getTime(), 'disconnected_at set after connected_at')
    t.equal(row?.last_seen_at?.getTime(), row?.disconnected_at?.getTime(), 'last_seen_at is the sweep time')
    const status = await eventually(async () => await retainedStatus(next.server, serial), 5000, 'a retained status')
    t.match(status, { status: 'offline', reason: 'lost' }, 'retained status offline/lost published by the sweep')
    t.equal(new Date(status.at).getTime(), row?.disconnected_at?.getTime(), 'the status time is the row\'s disconnected_at')
    t.equal(await onlineDevices(next.httpUrl), 0, 'health counts no online device')
    t.ok(next.logs.some(line => line.msg === 'swept devices left online by a node that is gone' && line.count === 1), 'the sweep is logged with its count')

    // the swept device comes back on the new node
    const again = await connectDevice({ url: next.wsUrl, identity: await pki.device(serial) })
    t.teardown(() => again.mqtt.end(true))
    await eventually(async () => (await retainedStatus(next.server, serial))?.status === 'online', 5000, 'online again')
    await next.server.settled()
    t.match(await next.server.db.knex<Device>('devices').where({ serial }).first(), { status: 'online', node_id: next.server.nodeId, disconnect_reason: null }, 'row online on the new node')
    await again.close()
  })

  t.test(`sweep at start: rows online under a foreign node id or no node id go offline/lost, others are untouched (${database})`, async (t) => {
    let databaseUrl: string | undefined
    const foreign = uniqueSerial('foreign')
    const orphan = uniqueSerial('orphan')
    const quiet = uniqueSerial('quiet')
    const seedAt = new Date(Date.now() - 60_000)
    const seed = [
      { serial: foreign, status: 'online', node_id: 'a-node-that-died', connection_id: '00000000-0000-4000-8000-000000000001', connected_at: seedAt, last_seen_at: seedAt },
      { serial: orphan, status: 'online', node_id: null, connection_id: null, connected_at: seedAt, last_seen_at: seedAt },
      { serial: quiet, status: 'offline', disconnect_reason: 'clean', node_id: null, connection_id: null, connected_at: seedAt, last_seen_at: seedAt, disconnected_at: seedAt }
    ]
    let next: Running
    if (database === 'postgres') {
      const first = await startTestServer(t, { database: 'postgres', keepDatabase: true })
      databaseUrl = first.databaseUrl!
      await first.close()
      // the database survives the first server; seed it the way a dead node leaves it
      const client = new pg.Client({ connectionString: databaseUrl })
      await client.connect()
      for (const row of seed) {
        await client.query(`INSERT INTO devices (serial, status, node_id, connection_id, connected_at, last_seen_at, disconnect_reason, disconnected_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
          [row.serial, row.status, row.node_id, row.connection_id, row.connected_at, row.last_seen_at, row.disconnect_reason ?? null, row.disconnected_at ?? null])
      }
      await client.end()
      const dropUrl = databaseUrl
      t.teardown(async () => {
        const admin = new pg.Client({ connectionString: dropUrl.replace(/\/[^/]*$/, '/postgres') })
        await admin.connect()
        await admin.query(`DROP DATABASE IF EXISTS ${new URL(dropUrl).pathname.slice(1)} WITH (FORCE)`)
        await admin.end()
      })
      const ts = await startTestServer(t, { databaseUrl, pki: first.pki })
      next = { server: ts.server, httpUrl: ts.httpUrl, wsUrl: ts.wsUrl, logs: ts.logs }
    } else {
      const dataDir = await mkdtemp(path.join(tmpdir(), 'shepherd-sweep-'))
      t.teardown(() => rm(dataDir, { recursive: true, force: true }))
      const caPath = path.join(dataDir, 'fleet_ca.pem')
      await writeFile(caPath, (await createTestPki()).caPem)
      const first = await startOnDiskPglite(t, dataDir, caPath)
      await first.server.db.knex('devices').insert(seed)
      await first.server.close() // its shutdown marks only its own devices offline
      next = await startOnDiskPglite(t, dataDir, caPath)
    }

    const rows = await next.server.db.knex<Device>('devices').whereIn('serial', [foreign, orphan, quiet]).select()
    const bySerial = new Map(rows.map(row => [row.serial, row]))
    for (const serial of [foreign, orphan]) {
      const row = bySerial.get(serial)
      t.match(row, { status: 'offline', disconnect_reason: 'lost', node_id: null, connection_id: null }, `${serial}: swept to offline/lost`)
      t.ok(row!.last_seen_at!.getTime() > seedAt.getTime(), `${serial}: last_seen_at moved to the sweep`)
      const status = await eventually(async () => await retainedStatus(next.server, serial), 5000, `retained status of ${serial}`)
      t.match(status, { status: 'offline', reason: 'lost' }, `${serial}: retained offline/lost`)
    }
    const untouched = bySerial.get(quiet)
    t.match(untouched, { status: 'offline', disconnect_reason: 'clean' }, 'an offline row keeps its reason')
    t.equal(untouched?.last_seen_at?.getTime(), seedAt.getTime(), 'an offline row keeps its last_seen_at')
    // the in-process broker keeps no retained messages across restarts: the registry's are published again, as they were
    t.match(await retainedStatus(next.server, quiet), { status: 'offline', reason: 'clean', at: seedAt.toISOString() }, 'an offline row\'s retained status is published again')
    t.ok(next.logs.some(line => /retained offline statuses published again/.test(String(line.msg)) && (line.devices as number) >= 3), 'and the count logged')
    t.equal(await onlineDevices(next.httpUrl), 0, 'health counts no online device')
    t.ok(next.logs.some(line => line.msg === 'swept devices left online by a node that is gone' && line.count === 2), 'the sweep logs a count of 2')
  })
}
