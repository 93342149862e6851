// The WebSocket endpoint caps frame size (ws maxPayload = MQTT_MAX_PACKET_SIZE), so a client
// cannot make the server buffer a huge frame, and before a connection has authenticated it may
// send no more than a CONNECT's worth of bytes; the server keeps serving others.
import t from 'tap'
import WebSocket from 'ws'
import { connectDevice } from '../../src/device-client/device-client.js'
import { startTestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

t.test('a WebSocket frame over the limit closes that connection with 1009', async (t) => {
  const ts = await startTestServer(t, { env: { MQTT_MAX_PACKET_SIZE: '16384' } })
  const socket = new WebSocket(ts.wsUrl, 'mqtt')
  await new Promise<void>((resolve, reject) => { socket.once('open', resolve); socket.once('error', reject) })
  t.equal(socket.protocol, 'mqtt', 'the server answers with the mqtt subprotocol')
  const closed = new Promise<number>(resolve => socket.once('close', code => resolve(code)))
  socket.send(Buffer.alloc(16385))
  t.equal(await closed, 1009, 'message too big')
  const device = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(uniqueSerial()) })
  t.ok(device.mqtt.connected, 'others still connect')
  await device.close()
})

t.test('before it authenticates, a WebSocket connection may send a CONNECT\'s worth of bytes, even in fragments', async (t) => {
  const ts = await startTestServer(t) // MQTT_MAX_PACKET_SIZE 256 KiB: ws alone would buffer a message that large
  const socket = new WebSocket(ts.wsUrl, 'mqtt')
  await new Promise<void>((resolve, reject) => { socket.once('open', resolve); socket.once('error', reject) })
  const closed = new Promise<void>(resolve => socket.once('close', () => resolve()))
  // one unfinished message in 4 KiB fragments, never a whole MQTT packet
  for (let i = 0; i < 16 && socket.readyState === WebSocket.OPEN; i++) {
    socket.send(Buffer.alloc(4096), { fin: false })
    await new Promise(resolve => setTimeout(resolve, 20))
  }
  await closed
  t.pass('closed before 64 KiB arrived')
  t.ok(ts.logs.some(line => line.reason === 'too_much_before_connect' && (line.bytes as number) < 40 * 1024), 'logged with the reason, around the CONNECT limit')
  const metrics = await ts.server.metrics()
  t.match(metrics, /^shepherd_device_connect_refusals_total\{reason="too_much_before_connect"\} 1$/m, 'counted among the refusals')
  const device = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(uniqueSerial()) })
  await device.mqtt.publishAsync(`shepherd/devices/${device.serial}/info`, JSON.stringify({ firmware_version: '1.0.0', notes: 'x'.repeat(100_000) }), { qos: 1 })
  t.pass('an authenticated device sends a 100 KB message')
  await device.close()
})

t.test('a CONNECT over the limit in one WebSocket message is refused once: too_much_before_connect, not packet_too_large as well', async (t) => {
  const ts = await startTestServer(t)
  const socket = new WebSocket(ts.wsUrl, 'mqtt')
  await new Promise<void>((resolve, reject) => { socket.once('open', resolve); socket.once('error', reject) })
  const closed = new Promise<void>(resolve => socket.once('close', () => resolve()))
  const message = Buffer.alloc(30_000)
  message.set([0x10, 0xac, 0xea, 0x01]) // CONNECT, remaining length 29,996: the whole message
  socket.send(message)
  await closed
  const metrics = await ts.server.metrics()
  t.match(metrics, /^shepherd_device_connect_refusals_total\{reason="too_much_before_connect"\} 1$/m)
  t.match(metrics, /^shepherd_device_connect_refusals_total\{reason="packet_too_large"\} 0$/m)
})
