// Backpressure with a real server and real devices: a deliberately slow handler that is not lossy
// paces the pipeline. A burst of QoS 1 messages is slowed down (publishes are held, PUBACKs wait)
// but every point arrives exactly once, while the queue stays within its bound; QoS 0 points that
// arrive while the pipeline is saturated are dropped and counted.
import t from 'tap'
import { connectDevice } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { MAX_POINTS_PER_MESSAGE } from '../../src/metrics/points.js'
import { eventually, startTestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { recordingHandler } from './recording-handler.js'

const QUEUE_POINTS = 1000

function sample (text: string, series: string): number {
  const line = text.split('\n').find(l => l.startsWith(`${series} `))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

t.test('a slow non-lossy handler slows QoS 1 publishers down without losing points; QoS 0 overflow is dropped and counted', async (t) => {
  const slow = await recordingHandler({ name: 'slow', delayMs: 40 })
  const ts = await startTestServer(t, { env: { METRICS_HANDLERS: slow.path, METRICS_QUEUE_POINTS: String(QUEUE_POINTS) } })
  const connect = async (prefix: string): Promise<Awaited<ReturnType<typeof connectDevice>>> => {
    const client = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(uniqueSerial(prefix)), answerCommands: false })
    t.teardown(() => client.mqtt.end(true))
    return client
  }
  const a = await connect('burst')
  const b = await connect('qos0')

  // what /metrics says during the burst
  const seen = { maxQueue: 0, saturated: false, maxHeld: 0 }
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      const text = await ts.server.metrics()
      seen.maxQueue = Math.max(seen.maxQueue, sample(text, 'shepherd_metrics_queue_points'))
      seen.maxHeld = Math.max(seen.maxHeld, sample(text, 'shepherd_metrics_held_publishes'))
      seen.saturated ||= sample(text, 'shepherd_metrics_saturated') === 1
      await new Promise(resolve => setTimeout(resolve, 5))
    }
  })()

  // 30 QoS 1 messages of 1,000 points each, all sent at once; every value is unique
  const messages = 30
  const recordedAt = Math.floor(Date.now() / 1000)
  const started = Date.now()
  const burst = Promise.all(Array.from({ length: messages }, (_, m) => a.mqtt.publishAsync(deviceTopic(a.serial, 'metrics'), JSON.stringify({
    metrics: Array.from({ length: MAX_POINTS_PER_MESSAGE }, (_, i) => ({ name: 'n', value: m * MAX_POINTS_PER_MESSAGE + i, recorded_at: recordedAt }))
  }), { qos: 1 })))

  // meanwhile another device publishes QoS 0 messages of 10 points
  let qos0Sent = 0
  let bursting = true
  void burst.finally(() => { bursting = false })
  while (bursting) {
    await b.publishMetrics(Array.from({ length: 10 }, (_, i) => ({ name: 'q', value: i })), 0)
    qos0Sent += 10
    await new Promise(resolve => setTimeout(resolve, 10))
  }
  await burst
  t.pass(`all ${messages} QoS 1 messages acknowledged after ${Date.now() - started} ms`)

  const total = messages * MAX_POINTS_PER_MESSAGE
  const fromA = (): number[] => slow.points().filter(p => p.serial === a.serial).map(p => p.value)
  await eventually(() => fromA().length >= total, 20_000, 'every QoS 1 point handled')
  const values = fromA()
  t.equal(values.length, total, `${total} points handled`)
  t.equal(new Set(values).size, total, 'each exactly once')

  const fromB = (): number => slow.points().filter(p => p.serial === b.serial).length
  const dropped = async (): Promise<number> => sample(await ts.server.metrics(), 'shepherd_metrics_points_dropped_total{reason="saturated_qos0"}')
  await eventually(async () => fromB() + await dropped() === qos0Sent, 10_000, 'every QoS 0 point handled or counted as dropped')
  t.ok(await dropped() > 0, `QoS 0 points dropped while saturated: ${await dropped()} of ${qos0Sent}`)
  sampling = false
  await sampler

  t.ok(seen.saturated, 'the pipeline was saturated (gauge)')
  t.ok(seen.maxHeld > 0, `publishes were held back (up to ${seen.maxHeld})`)
  t.ok(seen.maxQueue <= QUEUE_POINTS + MAX_POINTS_PER_MESSAGE, `the queue stayed within its bound (max ${seen.maxQueue})`)
  const text = await ts.server.metrics()
  t.equal(sample(text, 'shepherd_metrics_overload_disconnects_total'), 0, 'no device was disconnected for overload')
  t.equal(sample(text, 'shepherd_metrics_saturated'), 0, 'not saturated any more')
  t.equal(sample(text, 'shepherd_metrics_queue_points'), 0, 'the queue drained')
  t.equal(slow.recording.maxRunning, 1, 'the handler got one batch at a time')
  t.ok(a.mqtt.connected && b.mqtt.connected, 'both devices stayed connected')
})
