import t from 'tap'
import memoryPersistence from 'aedes-persistence'
import { Aedes } from 'aedes'
import mqtt from 'mqtt'
import net from 'node:net'
import type { Readable } from 'node:stream'
import { withRetainedIndex, type RetainedPersistence } from '../../src/mqtt/retained-index.js'

async function collect (stream: Readable): Promise<string[]> {
  const topics: string[] = []
  for await (const packet of stream) topics.push((packet as { topic: string }).topic)
  return topics.sort()
}

t.test('exact topics are looked up, wildcards still scan', async (t) => {
  const persistence = (memoryPersistence as unknown as () => RetainedPersistence)()
  let scans = 0
  const scan = persistence.createRetainedStreamCombi.bind(persistence)
  persistence.createRetainedStreamCombi = (patterns) => { scans++; return scan(patterns) }
  withRetainedIndex(persistence)
  const broker = await Aedes.createBroker({ persistence })
  t.teardown(() => new Promise<void>(resolve => { broker.close(() => resolve()) }))

  for (let i = 0; i < 1000; i++) {
    await persistence.storeRetained({ topic: `shepherd/devices/d${i}/status`, payload: Buffer.from(`s${i}`) } as never)
  }
  t.same(await collect(persistence.createRetainedStreamCombi(['shepherd/devices/d7/status'])), ['shepherd/devices/d7/status'])
  t.same(await collect(persistence.createRetainedStreamCombi(['shepherd/devices/d7/status', 'shepherd/devices/nope/status'])), ['shepherd/devices/d7/status'])
  t.equal(scans, 0, 'no scan for wildcard-free subscriptions')

  t.same((await collect(persistence.createRetainedStreamCombi(['shepherd/devices/+/status']))).length, 1000, 'wildcards match every retained topic')
  t.same(await collect(persistence.createRetainedStreamCombi(['shepherd/devices/d99/#'])), ['shepherd/devices/d99/status'])
  t.equal(scans, 2)

  await persistence.storeRetained({ topic: 'shepherd/devices/d7/status', payload: Buffer.alloc(0) } as never)
  t.same(await collect(persistence.createRetainedStreamCombi(['shepherd/devices/d7/status'])), [], 'an empty retained message clears it')
  t.same((await collect(persistence.createRetainedStreamCombi(['shepherd/devices/+/status']))).length, 999, 'cleared for wildcard scans too')
})

t.test('a subscriber to an exact topic receives its retained message through the broker', async (t) => {
  const persistence = withRetainedIndex((memoryPersistence as unknown as () => RetainedPersistence)())
  const broker = await Aedes.createBroker({ persistence })
  const server = net.createServer(socket => broker.handle(socket))
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    await new Promise<void>(resolve => { broker.close(() => resolve()) })
    await new Promise<void>(resolve => server.close(() => resolve()))
  })
  const url = `mqtt://127.0.0.1:${(server.address() as net.AddressInfo).port}`
  const publisher = await mqtt.connectAsync(url)
  await publisher.publishAsync('shepherd/devices/a/status', '{"status":"online"}', { qos: 1, retain: true })
  await publisher.endAsync()
  const subscriber = await mqtt.connectAsync(url)
  const received = new Promise<[string, string, boolean]>(resolve => {
    subscriber.on('message', (topic, payload, packet) => resolve([topic, payload.toString(), packet.retain]))
  })
  await subscriber.subscribeAsync('shepherd/devices/a/status', { qos: 1 })
  t.same(await received, ['shepherd/devices/a/status', '{"status":"online"}', true])
  await subscriber.endAsync()
})
