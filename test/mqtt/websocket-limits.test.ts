// The WebSocket endpoint caps frame size (ws maxPayload = MQTT_MAX_PACKET_SIZE), so a client
// cannot make the server buffer a huge frame; the server keeps serving others.
import t from 'tap'
import WebSocket from 'ws'
import { connectDevice } from '../../src/device-client/device-client.js'
import { startTestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

t.test('a WebSocket frame over the limit closes that connection with 1009', async (t) => {
  const ts = await startTestServer(t, { env: { MQTT_MAX_PACKET_SIZE: '65536' } })
  const socket = new WebSocket(ts.wsUrl, 'mqtt')
  await new Promise<void>((resolve, reject) => { socket.once('open', resolve); socket.once('error', reject) })
  t.equal(socket.protocol, 'mqtt', 'the server answers with the mqtt subprotocol')
  const closed = new Promise<number>(resolve => socket.once('close', code => resolve(code)))
  socket.send(Buffer.alloc(65537))
  t.equal(await closed, 1009, 'message too big')
  const device = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(uniqueSerial()) })
  t.ok(device.mqtt.connected, 'others still connect')
  await device.close()
})
