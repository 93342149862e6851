import t from 'tap'
import { execFileSync } from 'node:child_process'
import { mkdtemp, readFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { connectDevice } from '../../src/device-client/device-client.js'
import { startTestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

t.test('with TLS_CERT/TLS_KEY the server speaks HTTPS, WSS and MQTTS only', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-tls-'))
  const certPath = path.join(dir, 'server.pem')
  const keyPath = path.join(dir, 'server-key.pem')
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes',
    '-keyout', keyPath, '-out', certPath, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost'], { stdio: 'ignore' })
  const ca = await readFile(certPath)
  const ts = await startTestServer(t, { env: { TLS_CERT: certPath, TLS_KEY: keyPath } })
  const httpsPort = new URL(ts.httpUrl).port
  const mqttPort = new URL(ts.mqttUrl).port

  for (const url of [`wss://127.0.0.1:${httpsPort}/mqtt`, `mqtts://127.0.0.1:${mqttPort}`]) {
    const device = await connectDevice({ url, identity: await ts.pki.device(uniqueSerial()), mqttOptions: { ca, rejectUnauthorized: true } })
    t.ok(device.mqtt.connected, `device connected over ${url.split(':')[0]}`)
    await device.close()
  }

  await t.rejects(connectDevice({ url: `mqtt://127.0.0.1:${mqttPort}`, identity: await ts.pki.device(uniqueSerial()), connectTimeoutMs: 1500 }),
    'plain MQTT is not served on the MQTTS port')
  await t.rejects(fetch(`http://127.0.0.1:${httpsPort}/api/health`), 'plain HTTP is not served on the HTTPS port')
  t.equal(ts.logs.filter(line => String(line.msg).includes('without TLS')).length, 0, 'no plaintext warning with TLS on')
})

t.test('without TLS on a non-loopback address the server warns once', async (t) => {
  const ts = await startTestServer(t, { env: { HOST: '0.0.0.0' } })
  const warnings = ts.logs.filter(line => String(line.msg).includes('without TLS'))
  t.equal(warnings.length, 1)
  t.equal(warnings[0]?.level, 40, 'a warning')
  const loopback = await startTestServer(t)
  t.equal(loopback.logs.filter(line => String(line.msg).includes('without TLS')).length, 0, 'no warning on 127.0.0.1')
})
