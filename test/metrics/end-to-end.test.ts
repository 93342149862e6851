// Metrics storage end to end, on the production path: real devices (the reference device client,
// signed credentials) publish QoS 1 metrics over MQTT into a real Shepherd running only the
// `postgres` handler on a real PostgreSQL database, and the rows are counted in metric_points.
// 1. A burst of 10,000 points (20 devices × 50 messages × 10 points, one message in flight per
//    device, as fast as the PUBACKs come): every point stored, each exactly once.
// 2. A PostgreSQL outage in the middle of such a burst: the server reaches its database through a
//    TCP proxy that is cut (connections destroyed, new ones refused) after the first third of the
//    burst, the devices keep publishing, and the proxy comes back 3 s later. A device whose
//    connection drops reconnects and sends again only what was not acknowledged. What a PUBACK
//    guarantees (README, "What a PUBACK means": validated and queued in the server's memory)
//    together with the handler's "no loss on database trouble" means: every acknowledged point is
//    stored, a point sent once is stored exactly once, a point sent again after a lost PUBACK at
//    least once and at most as often as it was sent, and nothing else.
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'
import t, { type Test } from 'tap'
import { connectDevice, type DeviceClient } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { uniqueSerial } from '../helpers/pki.js'
import { createTestDatabase, eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { startTcpProxy } from '../helpers/tcp-proxy.js'

const DEVICES = 20
const MESSAGES = 50
const POINTS = 10
const TOTAL = DEVICES * MESSAGES * POINTS

/** One sample of the Prometheus text, 0 when absent. */
function sample (text: string, series: string): number {
  const line = text.split('\n').find(l => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

/**
 * A device that publishes its messages in order, one in flight: message m holds POINTS points
 * named p0…p9 with the values m*POINTS+i (unique per device) recorded `m` seconds before `base`.
 * When its connection drops it reconnects (a freshly signed credential each time) and sends again
 * the message whose PUBACK it did not get.
 */
interface Publisher {
  serial: string
  /** message index → how many times it was published */
  sends: Map<number, number>
  acked: Set<number>
  /** connections lost while publishing */
  drops: number
  send (from: number, to: number): Promise<void>
  close (): Promise<void>
}

async function publisher (t: Test, ts: TestServer, base: number, connectDeadlineMs = 30_000): Promise<Publisher> {
  const serial = uniqueSerial('e2e')
  const identity = await ts.pki.device(serial)
  let lastTimestamp = 0
  let client: DeviceClient | undefined
  let closed!: Promise<never>

  async function connect (): Promise<void> {
    const deadline = Date.now() + connectDeadlineMs
    for (;;) {
      // the server accepts a (serial, timestamp) credential once: every attempt signs a later second
      lastTimestamp = Math.max(Math.floor(Date.now() / 1000), lastTimestamp + 1)
      try {
        const connected = await connectDevice({ url: ts.mqttUrl, identity, answerCommands: false, timestamp: lastTimestamp, connectTimeoutMs: 5000 })
        closed = new Promise<never>((_resolve, reject) => {
          connected.mqtt.once('close', () => { reject(new Error('connection closed')) })
        })
        closed.catch(() => {})
        client = connected
        return
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`${serial} could not reconnect within ${connectDeadlineMs} ms: ${String(error)}`)
        await sleep(200)
      }
    }
  }
  await connect()
  t.teardown(() => { client?.mqtt.end(true) })

  const payload = (m: number): string => JSON.stringify({
    metrics: Array.from({ length: POINTS }, (_, i) => ({ name: `p${i}`, value: m * POINTS + i, unit: 'u', recorded_at: base - m }))
  })
  const self: Publisher = {
    serial,
    sends: new Map(),
    acked: new Set(),
    drops: 0,
    async send (from, to) {
      for (let m = from; m < to; m++) {
        for (;;) {
          const current = client!
          self.sends.set(m, (self.sends.get(m) ?? 0) + 1)
          try {
            await Promise.race([current.mqtt.publishAsync(deviceTopic(serial, 'metrics'), payload(m), { qos: 1 }), closed])
            self.acked.add(m)
            break
          } catch {
            // no PUBACK: the connection is gone (end(true) also fails the pending publish's callback)
            self.drops += 1
            current.mqtt.end(true)
            await connect()
          }
        }
      }
    },
    async close () { await client?.close() }
  }
  return self
}

async function publishers (t: Test, ts: TestServer, base: number): Promise<Publisher[]> {
  return await Promise.all(Array.from({ length: DEVICES }, async () => await publisher(t, ts, base)))
}

async function directClient (t: Test, url: string): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  t.teardown(() => client.end())
  return client
}

const countRows = async (db: pg.Client): Promise<number> =>
  (await db.query<{ rows: number }>('SELECT count(*)::int AS rows FROM metric_points')).rows[0]!.rows

/** Every stored point of the publishers: how often each (serial, value) is in metric_points, and rows that match none. */
async function storedPoints (db: pg.Client, devices: readonly Publisher[], base: number) {
  const { rows } = await db.query<{ serial: string, value: number, copies: number, faithful: boolean }>(
    `SELECT serial, value, count(*)::int AS copies,
            bool_and(name = 'p' || (value::int % $1) AND unit = 'u'
                     AND recorded_at = to_timestamp($2 - (value::int / $1))) AS faithful
       FROM metric_points GROUP BY serial, value`, [POINTS, base])
  const serials = new Set(devices.map(d => d.serial))
  const copies = new Map<string, number>()
  let foreign = 0
  let unfaithful = 0
  for (const row of rows) {
    if (!serials.has(row.serial) || !Number.isInteger(row.value) || row.value < 0 || row.value >= MESSAGES * POINTS) foreign += row.copies
    else copies.set(`${row.serial}/${row.value}`, row.copies)
    if (!row.faithful) unfaithful += 1
  }
  return { copies, foreign, unfaithful }
}

/** Checks the PUBACK guarantee, point by point; answers how many points were sent more than once. */
function checkGuarantee (t: Test, devices: readonly Publisher[], stored: Awaited<ReturnType<typeof storedPoints>>): number {
  const problems: string[] = []
  let resent = 0
  for (const device of devices) {
    for (let m = 0; m < MESSAGES; m++) {
      const sends = device.sends.get(m) ?? 0
      if (sends > 1) resent += POINTS
      for (let i = 0; i < POINTS; i++) {
        const copies = stored.copies.get(`${device.serial}/${m * POINTS + i}`) ?? 0
        if (device.acked.has(m) && copies === 0) problems.push(`${device.serial} message ${m} point ${i}: acknowledged, not stored`)
        else if (sends === 1 && copies !== 1) problems.push(`${device.serial} message ${m} point ${i}: sent once, stored ${copies} times`)
        else if (copies > sends) problems.push(`${device.serial} message ${m} point ${i}: sent ${sends} times, stored ${copies} times`)
      }
    }
  }
  t.same(problems.slice(0, 20), [], `every acknowledged point stored, none more often than sent (${problems.length} problems)`)
  t.equal(stored.foreign, 0, 'no row that no device published')
  t.equal(stored.unfaithful, 0, 'every row holds the name, unit and recorded_at it was published with')
  return resent
}

t.test('a burst of 10,000 points from 20 devices over MQTT is stored in PostgreSQL, each point exactly once', { timeout: 60_000 }, async (t) => {
  const ts = await startTestServer(t, { database: 'postgres', env: { METRICS_HANDLERS: 'postgres' } })
  const db = await directClient(t, ts.databaseUrl!)
  const base = Math.floor(Date.now() / 1000)
  const devices = await publishers(t, ts, base)

  const started = Date.now()
  await Promise.all(devices.map(async device => { await device.send(0, MESSAGES) }))
  const ackedAfter = Date.now() - started
  t.equal(devices.reduce((sum, d) => sum + d.acked.size, 0), DEVICES * MESSAGES, `all ${DEVICES * MESSAGES} messages acknowledged (${ackedAfter} ms)`)
  t.equal(devices.reduce((sum, d) => sum + d.drops, 0), 0, 'no device lost its connection')

  await eventually(async () => await countRows(db) >= TOTAL, 30_000, `${TOTAL} rows in metric_points`)
  const storedAfter = Date.now() - started
  // nothing more is on its way: the pipeline's queue and the handler's buffer are empty
  await eventually(async () => {
    const text = await ts.server.metrics()
    return sample(text, 'shepherd_metrics_queue_points') === 0 && sample(text, 'shepherd_metrics_postgres_buffered_points') === 0
  }, 10_000, 'the pipeline and the handler drained')
  t.comment(`acknowledged in ${ackedAfter} ms, stored in ${storedAfter} ms (${Math.round(TOTAL / (storedAfter / 1000))} points/s)`)

  const counts = (await db.query<{ rows: number, distinct: number }>(
    'SELECT count(*)::int AS rows, count(DISTINCT (serial, value))::int AS "distinct" FROM metric_points')).rows[0]!
  t.same(counts, { rows: TOTAL, distinct: TOTAL }, `${TOTAL} rows, ${TOTAL} distinct points`)
  const resent = checkGuarantee(t, devices, await storedPoints(db, devices, base))
  t.equal(resent, 0, 'no point had to be sent twice')
  const text = await ts.server.metrics()
  t.equal(sample(text, 'shepherd_metrics_points_accepted_total'), TOTAL, 'the server accepted every point')
  t.equal(sample(text, 'shepherd_metrics_postgres_insert_retries_total'), 0, 'no insert had to be retried')
})

t.test('a PostgreSQL outage in the middle of a burst: after recovery every acknowledged point is stored, none more often than it was sent', { timeout: 60_000 }, async (t) => {
  const OUTAGE_MS = 3000
  const target = await createTestDatabase()
  const proxy = await startTcpProxy(new URL(target.url))
  let ts: TestServer | undefined
  t.teardown(async () => {
    await proxy.restore().catch(() => {}) // let the server close normally if a check failed mid-outage
    await ts?.close()
    await proxy.cut()
    await target.drop()
  })
  ts = await startTestServer(t, { databaseUrl: proxy.url, env: { METRICS_HANDLERS: 'postgres' } })
  const db = await directClient(t, target.url) // counts without the proxy
  const base = Math.floor(Date.now() / 1000)
  const devices = await publishers(t, ts, base)
  const ackedPoints = (): number => devices.reduce((sum, d) => sum + d.acked.size, 0) * POINTS
  const phases = [0, 15, 35, MESSAGES] // before the cut, during the outage, after the restore

  // 1. the first third, then the cut while its last batches are still being inserted
  await Promise.all(devices.map(async device => { await device.send(phases[0]!, phases[1]!) }))
  const cutAt = Date.now()
  const cutting = proxy.cut()
  t.comment(`cut after ${ackedPoints()} acknowledged points, ${await countRows(db)} of them stored`)

  // 2. the devices go on publishing while the database is unreachable; it is back after OUTAGE_MS
  const during = Promise.all(devices.map(async device => { await device.send(phases[1]!, phases[2]!) })).then(() => Date.now())
  during.catch(() => {}) // awaited below; a failure fails the test there
  await cutting
  const healthDuring = await Promise.race([ts.api('GET', '/api/health').then(r => r.status), sleep(2000).then(() => 'no answer within 2 s')])
  await sleep(OUTAGE_MS - (Date.now() - cutAt))
  const storedAtRestore = await countRows(db)
  const ackedAtRestore = ackedPoints()
  const textAtRestore = await ts.server.metrics()
  await proxy.restore()
  const restoredAt = Date.now()
  const duringDoneAt = await during
  t.comment(`outage ${restoredAt - cutAt} ms; /api/health during it: ${healthDuring}; at the restore ${ackedAtRestore} points acknowledged, ${storedAtRestore} stored, ` +
    `${sample(textAtRestore, 'shepherd_metrics_postgres_buffered_points')} buffered by the handler, ${sample(textAtRestore, 'shepherd_metrics_postgres_insert_retries_total')} insert retries`)
  t.ok(storedAtRestore < ackedAtRestore, `the outage held back acknowledged points (${ackedAtRestore - storedAtRestore} not yet stored)`)
  t.ok(sample(textAtRestore, 'shepherd_metrics_postgres_insert_retries_total') > 0, 'the handler retried failed inserts during the outage')
  const dropsDuring = devices.reduce((sum, d) => sum + d.drops, 0)
  if (dropsDuring === 0) {
    // nothing waits for the database between a publish and its PUBACK
    t.ok(duringDoneAt <= restoredAt, `publishing went on during the outage: the second part was acknowledged ${duringDoneAt - cutAt} ms after the cut, before the restore`)
  } else {
    t.comment(`${dropsDuring} device connections lost around the outage; the second part was acknowledged ${duringDoneAt - cutAt} ms after the cut`)
  }

  // 3. the rest of the burst after the restore
  await Promise.all(devices.map(async device => { await device.send(phases[2]!, phases[3]!) }))
  t.equal(ackedPoints(), TOTAL, `all ${DEVICES * MESSAGES} messages acknowledged in the end`)

  await eventually(async () => await countRows(db) >= TOTAL, 30_000, `${TOTAL} rows in metric_points after the recovery`)
  await eventually(async () => {
    const text = await ts!.server.metrics()
    return sample(text, 'shepherd_metrics_queue_points') === 0 && sample(text, 'shepherd_metrics_postgres_buffered_points') === 0 &&
      sample(text, 'shepherd_metrics_postgres_spill_bytes') === 0
  }, 10_000, 'the pipeline and the handler drained')
  t.comment(`all stored ${Date.now() - restoredAt} ms after the restore`)

  const stored = await storedPoints(db, devices, base)
  const resent = checkGuarantee(t, devices, stored)
  const drops = devices.reduce((sum, d) => sum + d.drops, 0)
  t.comment(`device connections lost: ${drops}; points sent more than once: ${resent}`)
  const rows = await countRows(db)
  t.ok(rows >= TOTAL && rows <= TOTAL + resent, `${rows} rows: every point, and no extra copy beyond the ${resent} points sent again`)
  if (resent === 0) t.equal(rows, TOTAL, 'nothing was sent twice, so exactly one row per point')

  // the server recovered as a whole: its REST API and device connections use the database again
  t.equal((await ts.api('GET', '/api/health')).status, 200, '/api/health answers 200 after the recovery')
  const late = await publisher(t, ts, base, 10_000)
  await late.send(0, 1)
  await eventually(async () => (await db.query('SELECT 1 FROM metric_points WHERE serial = $1', [late.serial])).rowCount === POINTS, 10_000, 'a new device\'s points stored')
  t.pass('a new device connects (authenticated against the database) and its points are stored')
  const errors = ts.logs.filter(line => Number(line.level) >= 60)
  t.same(errors.map(line => line.msg), [], 'no fatal log line')
  t.comment(`error log lines: ${JSON.stringify([...new Set(ts.logs.filter(line => Number(line.level) === 50).map(line => line.msg))])}`)
})
