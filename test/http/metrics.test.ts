// GET /metrics: Prometheus text for an API token or METRICS_TOKEN, with the device, MQTT message,
// HTTP and process figures after real devices connected, were refused and exchanged messages.
import t from 'tap'
import { connectDevice } from '../../src/device-client/device-client.js'
import { createFleetCa } from '../../src/certs/pki.js'
import { makeIdentity } from '../../src/device-client/fleet.js'
import { loadConfig } from '../../src/config.js'
import { ConfigError } from '../../src/errors.js'
import { deviceTopic } from '../../src/topics.js'
import { startTestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

const METRICS_TOKEN = 'scraper-0123456789abcdef'

/** The value of the sample `name{labels}` (exactly as Prometheus text writes it), NaN when absent. */
function sample (text: string, series: string): number {
  const line = text.split('\n').find(l => l.startsWith(series + ' '))
  return line === undefined ? Number.NaN : Number(line.slice(series.length + 1))
}

t.test('/metrics', async (t) => {
  const ts = await startTestServer(t, { env: { METRICS_TOKEN } })

  t.test('needs an API token or METRICS_TOKEN', async (t) => {
    const missing = await ts.api('GET', '/metrics', { token: null })
    t.equal(missing.status, 401)
    t.equal(missing.body.error, 'unauthorized')
    t.equal((await ts.api('GET', '/metrics', { token: 'not-a-valid-token' })).status, 401, 'an unknown token is refused')

    const withApiToken = await ts.api('GET', '/metrics')
    t.equal(withApiToken.status, 200, 'an API token')
    t.equal(withApiToken.headers['content-type'], 'text/plain; version=0.0.4; charset=utf-8')
    const withMetricsToken = await ts.api('GET', '/metrics', { token: METRICS_TOKEN })
    t.equal(withMetricsToken.status, 200, 'METRICS_TOKEN')
    t.match(withMetricsToken.text, /^shepherd_process_cpu_user_seconds_total \d/m, 'process figures')
  })

  t.test('device, MQTT and HTTP figures', async (t) => {
    const stranger = await createFleetCa()
    const foreign = await makeIdentity({ certificate: stranger.certificate, privateKey: stranger.privateKey }, uniqueSerial('foreign'))
    await t.rejects(connectDevice({ url: ts.mqttUrl, identity: foreign }), 'a device of another CA is refused')

    const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(uniqueSerial('metrics')), answerCommands: false })
    t.teardown(() => device.mqtt.end(true))
    await device.publishMetrics([{ name: 'temperature', value: 21.5 }])
    await device.mqtt.subscribeAsync(deviceTopic(device.serial, 'commands'), { qos: 1 })
    const delivered = new Promise(resolve => device.mqtt.once('message', resolve))
    await ts.server.broker.publish(deviceTopic(device.serial, 'commands'), JSON.stringify({ id: '1', command: 'ping' }), { qos: 1, retain: false })
    await delivered
    t.equal((await ts.api('GET', '/api/devices')).status, 200)

    const text = (await ts.api('GET', '/metrics', { token: METRICS_TOKEN })).text
    t.equal(sample(text, 'shepherd_connected_devices'), 1, 'connected devices')
    t.equal(sample(text, 'shepherd_device_connects_total'), 1, 'connects')
    t.equal(sample(text, 'shepherd_device_connect_refusals_total{reason="untrusted_certificate"}'), 1, 'refusals by reason')
    t.equal(sample(text, 'shepherd_device_connect_refusals_total{reason="revoked"}'), 0, 'every reason, also at 0')
    t.ok(sample(text, 'shepherd_mqtt_messages_received_total') >= 1, 'messages received from devices')
    t.ok(sample(text, 'shepherd_mqtt_messages_delivered_total') >= 1, 'messages delivered to devices')
    t.equal(sample(text, 'shepherd_http_request_duration_seconds_count{method="GET",route="/api/devices",status_code="200"}'), 1, 'request durations by method, route pattern and status')
    t.ok(sample(text, 'shepherd_http_request_duration_seconds_count{method="GET",route="/metrics",status_code="401"}') >= 2, 'refused scrapes too')
    t.match(text, /^shepherd_http_request_duration_seconds_bucket\{le="0.005",method="GET",route="\/api\/devices",status_code="200"\} \d/m, 'a histogram')
  })
})

t.test('without METRICS_TOKEN only API tokens are accepted', async (t) => {
  const ts = await startTestServer(t)
  t.equal((await ts.api('GET', '/metrics', { token: METRICS_TOKEN })).status, 401)
  t.equal((await ts.api('GET', '/metrics')).status, 200)
})

t.test('METRICS_TOKEN must look like a bearer token', async (t) => {
  t.throws(() => loadConfig({ METRICS_TOKEN: 'short' }), ConfigError)
  t.throws(() => loadConfig({ METRICS_TOKEN: 'has a space inside it' }), /METRICS_TOKEN/)
  t.equal(loadConfig({ METRICS_TOKEN }).metricsToken, METRICS_TOKEN)
  t.equal(loadConfig({}).metricsToken, undefined)
})
