// A connection that stops reading must not hold up the broker: an observer whose socket is full
// (a paused tool, a bridge on a slow link) is closed once its buffer passes the cap, while the
// devices' publishes keep being acknowledged and delivered to everyone else.
import net from 'node:net'
import mqtt from 'mqtt'
import mqttPacket from 'mqtt-packet'
import t from 'tap'
import { randomUUID } from 'node:crypto'
import { connectDevice } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { uniqueSerial } from '../helpers/pki.js'
import { eventually, startTestServer } from '../helpers/server.js'

const MESSAGES = 800
const PAD = 'x'.repeat(32 * 1024)

/** An observer that subscribes to shepherd/# and then stops reading its socket. */
async function stalledObserver (mqttUrl: string, username: string, password: string): Promise<net.Socket> {
  const { hostname, port } = new URL(mqttUrl)
  const socket = net.connect(Number(port), hostname)
  await new Promise<void>((resolve, reject) => { socket.once('connect', resolve).once('error', reject) })
  const parser = mqttPacket.parser({ protocolVersion: 4 })
  const suback = new Promise<void>((resolve) => { parser.on('packet', (packet) => { if (packet.cmd === 'suback') resolve() }) })
  socket.on('data', (data) => { parser.parse(data) })
  socket.write(mqttPacket.generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: `stalled-${randomUUID()}`, keepalive: 0, username, password: Buffer.from(password) }))
  socket.write(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'shepherd/#', qos: 0 }] }))
  await suback
  socket.pause()
  return socket
}

t.test('an observer that stops reading is closed; devices and other observers go on', async (t) => {
  const ts = await startTestServer(t, { mqttMaxBufferedBytes: 256 * 1024 })
  const stalledAccount = await ts.server.observers.add('stalled-tool')
  const healthyAccount = await ts.server.observers.add('healthy-tool')
  if (!stalledAccount.ok || !healthyAccount.ok) throw new Error('observers not created')
  const stalled = await stalledObserver(ts.mqttUrl, 'stalled-tool', stalledAccount.password)
  t.teardown(() => { stalled.destroy() })

  const serial = uniqueSerial('busy')
  const topic = deviceTopic(serial, 'replies')
  const healthy = await mqtt.connectAsync(ts.mqttUrl, { username: 'healthy-tool', password: healthyAccount.password, protocolVersion: 4, reconnectPeriod: 0 })
  t.teardown(() => healthy.end(true))
  let received = 0
  healthy.on('message', (messageTopic) => { if (messageTopic === topic) received += 1 })
  await healthy.subscribeAsync(topic, { qos: 0 })

  const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial) })
  t.teardown(() => device.close())
  // replies for unknown commands: forwarded to observers, nothing stored; 25 MiB in all, more
  // than the kernel's socket buffers and the cap together
  const started = Date.now()
  for (let i = 0; i < MESSAGES; i++) {
    await device.mqtt.publishAsync(topic, JSON.stringify({ id: randomUUID(), status: 'ok', result: { pad: PAD } }), { qos: 1 })
  }
  t.pass(`the device's ${MESSAGES} QoS 1 publishes were all acknowledged (${Date.now() - started} ms)`)
  await eventually(() => received === MESSAGES, 20_000, 'the healthy observer got every message')
  t.equal(received, MESSAGES)
  const closed = ts.logs.find(line => line.msg === 'MQTT connection closed: it stopped reading what it is sent')
  t.match(closed, { level: 40, clientId: /^stalled-/, reason: 'not_reading' }, 'the stalled observer was closed, and the log says why')
  t.ok((closed?.buffered_bytes as number) > 256 * 1024, 'once more than the cap was waiting')
})
