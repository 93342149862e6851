// The `prometheus` metrics handler: the latest value per device and metric name as
// shepherd_device_metric{serial,name} on GET /metrics, with METRICS_PROMETHEUS_MAX_SERIES series
// at most (points of further series are dropped and counted).
import t from 'tap'
import { connectDevice } from '../../src/device-client/device-client.js'
import { eventually, startTestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

function sample (text: string, series: string): number | undefined {
  const line = text.split('\n').find(l => l.startsWith(`${series} `))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

t.test('device metrics as gauges on /metrics, with a series cap', async (t) => {
  const ts = await startTestServer(t, { env: { METRICS_HANDLERS: 'prometheus', METRICS_PROMETHEUS_MAX_SERIES: '3' } })
  const scrape = async (): Promise<string> => {
    const response = await ts.api('GET', '/metrics')
    t.equal(response.status, 200)
    return response.text
  }
  const serial = uniqueSerial('prom')
  const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), answerCommands: false })
  t.teardown(() => device.mqtt.end(true))
  const now = Math.floor(Date.now() / 1000)
  const gauge = (name: string): string => `shepherd_device_metric{serial="${serial}",name="${name}"}`

  t.match(await scrape(), '# TYPE shepherd_device_metric gauge', 'the gauge is declared')
  await device.publishMetrics([{ name: 'cpu_percent', value: 12.5, unit: '%', recorded_at: now - 10 }, { name: 'temp', value: 40, recorded_at: now - 10 }])
  await eventually(async () => sample(await scrape(), gauge('temp')) === 40, 5000, 'the gauges')
  t.equal(sample(await scrape(), gauge('cpu_percent')), 12.5)

  // the latest by recorded_at wins, whatever the order of arrival
  await device.publishMetrics([{ name: 'cpu_percent', value: 50, recorded_at: now - 5 }, { name: 'cpu_percent', value: 99, recorded_at: now - 60 }])
  await eventually(async () => sample(await scrape(), gauge('cpu_percent')) === 50, 5000, 'the newer value')
  await device.publishMetrics([{ name: 'cpu_percent', value: 1, recorded_at: now - 30 }])
  await device.publishMetrics([{ name: 'marker', value: 1, recorded_at: now }])
  await eventually(async () => sample(await scrape(), gauge('marker')) === 1, 5000, 'the third series')
  t.equal(sample(await scrape(), gauge('cpu_percent')), 50, 'an older point does not replace a newer value')

  // three series exist: new ones are dropped and counted, existing ones still update
  await device.publishMetrics([{ name: 'fourth', value: 4, recorded_at: now }, { name: 'fifth', value: 5, recorded_at: now }, { name: 'temp', value: 41, recorded_at: now }])
  await eventually(async () => sample(await scrape(), gauge('temp')) === 41, 5000, 'the update of an existing series')
  const text = await scrape()
  t.equal(sample(text, gauge('fourth')), undefined, 'no fourth series')
  t.equal(sample(text, gauge('fifth')), undefined, 'no fifth series')
  t.equal(text.split('\n').filter(line => line.startsWith('shepherd_device_metric{')).length, 3, 'three series at most')
  t.equal(sample(text, 'shepherd_device_metric_points_dropped_total'), 2, 'points of new series counted as dropped')
  t.equal(ts.logs.filter(l => l.msg === 'shepherd_device_metric reached METRICS_PROMETHEUS_MAX_SERIES; points of new series are dropped').length, 1, 'one warning')
})
