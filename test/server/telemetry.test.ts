// Connects and refusals are counted per reason in the server's Prometheus registry.
import t from 'tap'
import { connectDevice } from '../../src/device-client/device-client.js'
import { createFleetCa } from '../../src/certs/pki.js'
import { makeIdentity } from '../../src/device-client/fleet.js'
import { CONNECT_REFUSAL_REASONS } from '../../src/telemetry.js'
import { startTestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

function counter (text: string, name: string): number {
  const line = text.split('\n').find(l => l.startsWith(name + ' '))
  return line === undefined ? Number.NaN : Number(line.slice(name.length + 1))
}

t.test('connects and refusals by reason are counted', async (t) => {
  const ts = await startTestServer(t)
  const stranger = await createFleetCa()
  const foreign = await makeIdentity({ certificate: stranger.certificate, privateKey: stranger.privateKey }, uniqueSerial())
  await t.rejects(connectDevice({ url: ts.wsUrl, identity: foreign }))
  await t.rejects(connectDevice({ url: ts.mqttUrl, identity: foreign }))
  const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(uniqueSerial()) })
  await device.close()

  const text = await ts.server.metrics()
  t.equal(counter(text, 'shepherd_device_connect_refusals_total{reason="untrusted_certificate"}'), 2)
  t.equal(counter(text, 'shepherd_device_connect_refusals_total{reason="revoked"}'), 0, 'every reason is exported, also at 0')
  t.equal(counter(text, 'shepherd_device_connects_total'), 1)
})

t.test('every reason a connection can be refused for is exported at 0 on a fresh server', async (t) => {
  const ts = await startTestServer(t)
  const text = await ts.server.metrics()
  // the list in src/telemetry.ts, and reasons counted outside the authenticator, named here so that none drops out of it
  const reasons = new Set<string>([...CONNECT_REFUSAL_REASONS, 'bad_serial', 'revoked', 'not_a_device_credential', 'observer_bad_credentials',
    'observer_logins_busy', 'empty_client_id_with_session', 'packet_too_large', 'too_much_before_connect'])
  for (const reason of reasons) t.equal(counter(text, `shepherd_device_connect_refusals_total{reason="${reason}"}`), 0, reason)
  const exported = text.split('\n').filter(l => l.startsWith('shepherd_device_connect_refusals_total{')).length
  t.equal(exported, reasons.size, 'and no other')
})
