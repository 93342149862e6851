// Metrics ingestion end to end: real devices publish on their metrics topic, the server validates
// the points, reports what it drops on the device's errors topic, and hands valid points in batches
// to every handler of METRICS_HANDLERS (here: logger, a recording custom module, and two custom
// modules that fail).
import t from 'tap'
import type { Test } from 'tap'
import { connectDevice, type DeviceClient } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { MAX_PAYLOAD_BYTES } from '../../src/metrics/points.js'
import { eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { recordingHandler } from './recording-handler.js'

interface ErrorReport { topic: string, reason: string, at: string }

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** A connected device listening on its errors topic. */
async function device (t: Test, ts: TestServer, serial = uniqueSerial('metrics')): Promise<{ client: DeviceClient, reports: ErrorReport[] }> {
  const client = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), answerCommands: false })
  t.teardown(() => client.mqtt.end(true))
  const reports: ErrorReport[] = []
  client.mqtt.on('message', (topic, payload) => {
    if (topic === deviceTopic(serial, 'errors')) reports.push(JSON.parse(payload.toString()) as ErrorReport)
  })
  await client.mqtt.subscribeAsync(deviceTopic(serial, 'errors'), { qos: 0 })
  return { client, reports }
}

/** Value of one sample of the Prometheus text, 0 when absent. */
function sample (text: string, series: string): number {
  const line = text.split('\n').find(l => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

const nowS = (): number => Math.floor(Date.now() / 1000)

t.test('metrics ingestion', async (t) => {
  const recorder = await recordingHandler()
  const failing = await recordingHandler({ name: 'failing', fail: true })
  const throwing = await recordingHandler({ name: 'throwing', fail: 'sync' })
  const ts = await startTestServer(t, { env: { METRICS_HANDLERS: `logger,${recorder.path},${failing.path},${throwing.path}` } })
  const of = (serial: string): Array<{ name: string, value: number }> => recorder.points().filter(p => p.serial === serial)

  t.test('valid points reach every handler, in batches with a uuid; the logger writes a debug line per point', async (t) => {
    const { client, reports } = await device(t, ts)
    const at = nowS() - 30
    await client.publishMetrics([
      { name: 'cpu_percent', value: 12.5, unit: '%', recorded_at: at },
      { name: 'temperature', value: -3, recorded_at: new Date(at * 1000).toISOString() }
    ])
    await client.publishMetrics([{ name: 'uptime', value: 42, unit: 's' }], 0)
    await eventually(() => of(client.serial).length === 3, 5000, 'three points recorded')
    const points = recorder.points().filter(p => p.serial === client.serial)
    t.same(points.map(p => ({ ...p, receivedAt: undefined })), [
      { serial: client.serial, name: 'cpu_percent', value: 12.5, unit: '%', recordedAt: new Date(at * 1000), receivedAt: undefined },
      { serial: client.serial, name: 'temperature', value: -3, unit: null, recordedAt: new Date(at * 1000), receivedAt: undefined },
      { serial: client.serial, name: 'uptime', value: 42, unit: 's', recordedAt: points[2]!.recordedAt, receivedAt: undefined }
    ], 'QoS 1 and QoS 0 points, as published')
    t.ok(points.every(p => p.receivedAt instanceof Date && Math.abs(p.receivedAt.getTime() - Date.now()) < 10_000), 'receivedAt is the server time')
    t.ok(recorder.recording.batches.every(b => UUID.test(b.id)), 'every batch has a uuid')
    t.equal(new Set(recorder.recording.batches.map(b => b.id)).size, recorder.recording.batches.length, 'batch ids are unique')
    t.equal(recorder.recording.maxRunning, 1, 'a handler gets one batch at a time')
    const lines = ts.logs.filter(l => l.msg === 'metric point' && l.serial === client.serial)
    t.match(lines, [
      { level: 20, serial: client.serial, name: 'cpu_percent', value: 12.5, unit: '%', recorded_at: new Date(at * 1000).toISOString() },
      { level: 20, serial: client.serial, name: 'temperature', value: -3, unit: null },
      { level: 20, serial: client.serial, name: 'uptime', value: 42, unit: 's' }
    ], 'the logger handler: one debug line per point')
    t.same(reports, [], 'nothing reported on errors')
  })

  t.test('a mixed batch: valid points go on, the dropped ones are reported by index and reason', async (t) => {
    const { client, reports } = await device(t, ts)
    const before = await ts.server.metrics()
    await client.mqtt.publishAsync(deviceTopic(client.serial, 'metrics'), JSON.stringify({
      metrics: [
        { name: 'ok_1', value: 1, recorded_at: nowS() },
        { name: 'bad_value', value: 'high', recorded_at: nowS() },
        { name: '', value: 1, recorded_at: nowS() },
        { name: 'ok_2', value: 2, recorded_at: nowS() },
        { name: 'future', value: 1, recorded_at: nowS() + 3600 },
        { name: 'old', value: 1, recorded_at: nowS() - 8 * 86_400 },
        { name: 'no_time', value: 1 }
      ]
    }), { qos: 1 })
    await eventually(() => reports.length === 1 && of(client.serial).length === 2, 5000, 'the report and the valid points')
    t.same(of(client.serial).map(p => p.name), ['ok_1', 'ok_2'], 'the valid points are handled')
    t.equal(reports[0]!.topic, 'metrics', 'the report names the metrics leaf')
    t.match(reports[0]!.reason, /^5 of 7 points dropped: metrics\[1\] invalid_value: [^;]+; metrics\[2\] invalid_name: [^;]+; metrics\[4\] in_future: [^;]+; metrics\[5\] too_old: [^;]+; metrics\[6\] invalid_recorded_at: /)
    const after = await ts.server.metrics()
    for (const reason of ['invalid_value', 'invalid_name', 'in_future', 'too_old', 'invalid_recorded_at']) {
      const series = `shepherd_metrics_points_rejected_total{reason="${reason}"}`
      t.equal(sample(after, series) - sample(before, series), 1, `counted: ${reason}`)
    }
    t.ok(sample(after, 'shepherd_metrics_points_accepted_total') - sample(before, 'shepherd_metrics_points_accepted_total') >= 2, 'accepted points counted')
    t.match(after, 'shepherd_metrics_points_rejected_total{reason="invalid_unit"} 0', 'every reason is exported, also at 0')
  })

  t.test('payloads refused as a whole are reported; the device stays connected', async (t) => {
    const { client, reports } = await device(t, ts)
    const topic = deviceTopic(client.serial, 'metrics')
    const tooMany = JSON.stringify({ metrics: Array.from({ length: 1001 }, () => ({ name: 'n', value: 1, recorded_at: nowS() })) })
    const tooLarge = JSON.stringify({ metrics: [{ name: 'n', value: 1, unit: 'x'.repeat(MAX_PAYLOAD_BYTES), recorded_at: nowS() }] })
    const cases: Array<[string, string | Buffer, RegExp]> = [
      ['not JSON', 'cpu=12', /^not_json: /],
      ['binary', Buffer.from([0x00, 0xff, 0x10]), /^not_json: /],
      ['an array', '[{"name":"a","value":1,"recorded_at":1}]', /^not_an_object: /],
      ['no metrics array', '{"metric":[]}', /^no_metrics_array: /],
      ['metrics not an array', '{"metrics":{"name":"a"}}', /^no_metrics_array: /],
      ['too many points', tooMany, /^too_many_points: 1001 points, more than 1000/],
      ['over 64 KiB', tooLarge, new RegExp(`^payload_too_large: the payload is \\d+ bytes, more than ${MAX_PAYLOAD_BYTES}`)]
    ]
    for (const [what, payload, reason] of cases) {
      await client.mqtt.publishAsync(topic, payload, { qos: 1 })
      await eventually(() => reports.length === 1, 5000, `the report for ${what}`)
      t.equal(reports[0]!.topic, 'metrics')
      t.match(reports[0]!.reason, reason, what)
      t.match(reports[0]!.reason, /no point was accepted$/)
      reports.length = 0
      t.ok(client.mqtt.connected, `still connected after ${what}`)
    }
    const text = await ts.server.metrics()
    t.ok(sample(text, 'shepherd_metrics_payloads_rejected_total{reason="not_json"}') >= 2, 'refused payloads counted by reason')
    t.ok(sample(text, 'shepherd_metrics_payloads_rejected_total{reason="payload_too_large"}') >= 1)
    t.same(of(client.serial), [], 'nothing ingested')
    await client.publishMetrics([{ name: 'after', value: 1 }])
    await eventually(() => of(client.serial).length === 1, 5000, 'a valid publish afterwards')
    t.same(reports, [])
  })

  t.test('a device publishing to another device\'s metrics topic is refused and nothing is ingested', async (t) => {
    const { client: a, reports } = await device(t, ts)
    const { client: b } = await device(t, ts)
    await a.mqtt.publishAsync(deviceTopic(b.serial, 'metrics'), JSON.stringify({ metrics: [{ name: 'spoofed', value: 1, recorded_at: nowS() }] }), { qos: 1 })
    await a.publishMetrics([{ name: 'marker', value: 1 }])
    await eventually(() => of(a.serial).length === 1 && reports.length === 1, 5000, 'A\'s own point and the report')
    t.same(recorder.points().filter(p => p.name === 'spoofed' || p.serial === b.serial), [], 'nothing ingested for B, nor from A\'s spoofed publish')
    t.match(reports, [{ topic: deviceTopic(b.serial, 'metrics'), reason: /only its own info, metrics, replies, update_status/ }], 'A learns why')
  })

  t.test('handlers that reject or throw do not stop the others; failures are logged and counted by handler', async (t) => {
    const { client } = await device(t, ts)
    for (let i = 0; i < 3; i++) {
      await client.publishMetrics([{ name: 'n', value: i }])
      await eventually(() => of(client.serial).length === i + 1, 5000, `point ${i}`)
    }
    t.same(of(client.serial).map(p => p.value), [0, 1, 2], 'the recorder got every point')
    t.same(failing.recording.batches, [], 'the failing handler recorded nothing')
    const text = await ts.server.metrics()
    t.ok(sample(text, 'shepherd_metrics_handler_failures_total{handler="failing"}') >= 3, 'rejections counted')
    t.ok(sample(text, 'shepherd_metrics_handler_failures_total{handler="throwing"}') >= 3, 'synchronous throws counted')
    t.equal(sample(text, 'shepherd_metrics_handler_failures_total{handler="recorder"}'), 0)
    t.ok(sample(text, 'shepherd_metrics_handler_duration_seconds_count{handler="recorder"}') >= 3, 'handler latency histogram')
    t.match(ts.logs.filter(l => l.msg === 'metrics handler failed; its batch is lost for it' && l.handler === 'throwing'), [{ level: 50, err: { message: /on purpose \(sync\)/ } }])
  })

  t.test('on shutdown the queue is flushed to the handlers, then they are closed', async (t) => {
    const { client } = await device(t, ts)
    // a PUBACK means the points are queued; the server closes at once, before the batch window ends
    await client.publishMetrics([{ name: 'last', value: 1 }])
    client.mqtt.end(true)
    await ts.close()
    t.same(of(client.serial).map(p => p.name), ['last'], 'the queued point was handed over')
    t.ok(recorder.recording.closed && failing.recording.closed && throwing.recording.closed, 'every handler closed')
  })
})
