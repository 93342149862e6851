// OTA updates of the reference device against a real Shepherd: offers published on its firmware
// and commands topics, the image served by a plain node:http server of the test (Range resumes,
// a cut first response), update_status and replies watched through the broker.
import t, { type Test } from 'tap'
import { createHash, randomBytes } from 'node:crypto'
import http from 'node:http'
import type { AddressInfo } from 'node:net'
import { connectDevice, type DeviceClientOptions } from '../../src/device-client/device-client.js'
import type { FirmwareOffer } from '../../src/device-client/firmware-updater.js'
import { startTestServer, eventually } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

// one server for the file (its start dominates); every test has its own device
const ts = await startTestServer(t)
const IMAGE = randomBytes(256 * 1024)
const SHA256 = createHash('sha256').update(IMAGE).digest('hex')

interface ImageServer {
  url (path: string): string
  requests: Array<{ path: string, range: string | undefined }>
}

/**
 * Serves IMAGE at any path, honouring `Range: bytes=N-`; `cutFirstAfter` cuts the first response
 * after so many bytes; `statusFor` answers those paths with that status, once `holdErrors` resolves.
 */
async function serveImage (t: Test, options: { cutFirstAfter?: number, statusFor?: Record<string, number>, holdErrors?: Promise<unknown> } = {}): Promise<ImageServer> {
  const requests: ImageServer['requests'] = []
  let cut = options.cutFirstAfter
  const server = http.createServer((req, res) => {
    const path = req.url ?? '/'
    requests.push({ path, range: req.headers.range })
    const status = options.statusFor?.[path]
    if (status !== undefined) return void (options.holdErrors ?? Promise.resolve()).then(() => res.writeHead(status).end())
    const start = Number(/^bytes=(\d+)-$/.exec(req.headers.range ?? '')?.[1] ?? 0)
    const body = IMAGE.subarray(start)
    res.writeHead(start > 0 ? 206 : 200, {
      'content-length': body.length,
      ...(start > 0 ? { 'content-range': `bytes ${start}-${IMAGE.length - 1}/${IMAGE.length}` } : {})
    })
    if (cut === undefined) return res.end(body)
    res.write(body.subarray(0, cut), () => res.socket?.destroy())
    cut = undefined
  })
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => { server.closeAllConnections(); server.close(() => resolve()) }))
  const { port } = server.address() as AddressInfo
  return { url: path => `http://127.0.0.1:${port}${path}`, requests }
}

function offerFor (images: ImageServer, overrides: Partial<FirmwareOffer> = {}): FirmwareOffer {
  return { update_id: `u-${randomBytes(4).toString('hex')}`, firmware_id: 'fw-1', version: '2.0.0', target: 'sim', url: images.url('/fw/1'), sha256: SHA256, size: IMAGE.length, reboot: true, ...overrides }
}

type Message = Record<string, any> // eslint-disable-line @typescript-eslint/no-explicit-any

/** A connected device and what it sends on update_status, replies and info. */
async function startDevice (t: Test, options: Partial<DeviceClientOptions> = {}) {
  const serial = uniqueSerial('fw')
  const statuses: Message[] = []
  const replies: Message[] = []
  const infos: Message[] = []
  for (const [leaf, into] of [['update_status', statuses], ['replies', replies], ['info', infos]] as const) {
    await new Promise<void>(resolve => ts.server.broker.aedes.subscribe(`shepherd/devices/${serial}/${leaf}`, (packet, done) => {
      into.push(JSON.parse(packet.payload.toString()) as Message)
      done()
    }, resolve))
  }
  const device = await connectDevice({
    url: ts.wsUrl,
    identity: await ts.pki.device(serial),
    rebootDelayMs: 100,
    info: { firmware_version: '1.0.0', firmware_target: 'sim' },
    ...options
  })
  t.teardown(() => device.close())
  const row = async (): Promise<Message | undefined> => await ts.server.db.knex('devices').where({ serial }).first()
  // info and the online mark are separate writes (the online one batched): wait for both
  await eventually(async () => { const device = await row(); return device?.firmware_version === '1.0.0' && device.connected_at !== null }, 5000, 'info and connection recorded')
  const connectedAt = ((await row())!.connected_at as Date).getTime()
  return {
    serial,
    statuses,
    replies,
    infos,
    row,
    /** Resolves once the device is online on a connection newer than the first. */
    reconnected: () => eventually(async () => {
      const current = await row()
      return current?.status === 'online' && (current.connected_at as Date).getTime() > connectedAt ? current : undefined
    }, 5000, 'the device back online after its reboot'),
    offerRetained: (offer: FirmwareOffer) => ts.server.broker.publish(`shepherd/devices/${serial}/firmware`, JSON.stringify(offer), { qos: 1, retain: true }),
    sendCommand,
    /** Sends the command until the device answers it (it may not have subscribed yet): the reply. */
    command: async (id: string, command: string, payload: unknown): Promise<Message> => {
      for (let sent = 0; ; sent++) {
        const reply = replies.find(reply => reply.id === id)
        if (reply !== undefined) return reply
        if (sent === 40) throw new Error(`no reply to ${id}`)
        await sendCommand(id, command, payload)
        await new Promise(resolve => setTimeout(resolve, 100))
      }
    }
  }
  async function sendCommand (id: string, command: string, payload: unknown): Promise<void> {
    const now = Date.now()
    await ts.server.broker.publish(`shepherd/devices/${serial}/commands`, JSON.stringify({
      id, command, payload, issued_at: new Date(now).toISOString(), expires_at: new Date(now + 60_000).toISOString()
    }), { qos: 1, retain: false })
  }
}

const finalStatus = (statuses: Message[], status: string) => () => statuses.find(message => message.status === status)

t.test('a full update: download with progress, applying, reboot into the new version, complete', async (t) => {
  const images = await serveImage(t)
  const device = await startDevice(t)
  const offer = offerFor(images)
  await device.offerRetained(offer)

  await eventually(finalStatus(device.statuses, 'complete'), 5000, 'complete')
  await device.reconnected()
  t.same(device.infos.map(info => info.firmware_version), ['1.0.0', '2.0.0'], 'the device came back with the new firmware_version')
  await eventually(async () => (await device.row())?.firmware_version === '2.0.0', 5000, 'the new version recorded')
  t.ok(device.statuses.every(message => message.update_id === offer.update_id))
  const progress = device.statuses.filter(message => message.status === 'downloading').map(message => message.progress as number)
  t.equal(progress[0], 0, 'progress starts at 0')
  t.equal(progress.at(-1), 100, 'and ends at 100')
  t.ok(progress.every((value, i) => i === 0 || value > progress[i - 1]!), `progress increases: ${progress.join(', ')}`)
  t.ok(progress.length <= 11, 'about every 10 %, not per chunk')
  t.same(device.statuses.slice(progress.length).map(message => message.status), ['applying', 'complete'])
  t.equal(images.requests.length, 1, 'one download, although the retained offer came again after the reboot')
})

t.test('a download cut mid-body resumes with a Range request from the cut offset', async (t) => {
  const images = await serveImage(t, { cutFirstAfter: 100_000 })
  const device = await startDevice(t)
  await device.offerRetained(offerFor(images))

  await eventually(finalStatus(device.statuses, 'complete'), 5000, 'complete')
  t.same(images.requests.map(request => request.range), [undefined, 'bytes=100000-'])
  await eventually(async () => (await device.row())?.firmware_version === '2.0.0', 5000, 'the new version recorded')
})

t.test('a sha256 mismatch fails the update', async (t) => {
  const images = await serveImage(t)
  const device = await startDevice(t)
  await device.offerRetained(offerFor(images, { sha256: 'ab'.repeat(32) }))

  const failed = await eventually(finalStatus(device.statuses, 'failed'), 5000, 'failed')
  t.match(failed.error, new RegExp(`^sha256 mismatch: expected ${'ab'.repeat(32)} got ${SHA256}$`))
  t.notOk(device.statuses.some(message => message.status === 'applying'), 'not applied')
  t.equal((await device.row())!.firmware_version, '1.0.0')
})

t.test('the same update from the command and the retained offer is downloaded once', async (t) => {
  const images = await serveImage(t)
  const device = await startDevice(t)
  const offer = offerFor(images)
  t.same(await device.command('c1', 'update', offer), { id: 'c1', status: 'ok', result: { update_id: offer.update_id } })
  await device.offerRetained(offer)
  t.match(await device.command('c2', 'update', { ...offer, url: undefined }), { id: 'c2', status: 'error', error: /invalid update offer: missing or invalid url/ })
  await eventually(finalStatus(device.statuses, 'complete'), 5000, 'complete')
  t.same(await device.command('c3', 'update', offer), { id: 'c3', status: 'ok', result: { update_id: offer.update_id } }, 'a finished update is acknowledged again')
  t.equal(images.requests.length, 1, 'one download request')
  t.equal(device.statuses.filter(message => message.status === 'applying').length, 1, 'applied once')
})

t.test('a 403 is retried once with a newer URL of the same update', async (t) => {
  let renewed!: () => void
  const images = await serveImage(t, { statusFor: { '/expired': 403, '/gone': 404 }, holdErrors: new Promise<void>(resolve => { renewed = resolve }) })
  const device = await startDevice(t)
  // the 403 for the expired URL comes only once the device has the fresh one
  const offer = offerFor(images, { url: images.url('/expired') })
  await device.offerRetained(offer)
  await eventually(() => images.requests.length === 1, 5000, 'first request')
  t.match(await device.command('c1', 'update', { ...offer, url: images.url('/fw/fresh') }), { status: 'ok' }, 'the fresh offer taken')
  renewed()
  await eventually(finalStatus(device.statuses, 'complete'), 5000, 'complete')
  t.same(images.requests.map(request => request.path), ['/expired', '/fw/fresh'])

  const gone = offerFor(images, { update_id: 'u-gone', url: images.url('/gone') })
  await device.offerRetained(gone)
  t.match(await eventually(finalStatus(device.statuses, 'failed'), 5000, 'failed'), { update_id: 'u-gone', error: /404/ })
})

t.test('a newer update supersedes the one in progress', async (t) => {
  let release!: () => void
  const images = await serveImage(t, { statusFor: { '/slow': 503 }, holdErrors: new Promise<void>(resolve => { release = resolve }) })
  t.teardown(() => release())
  const device = await startDevice(t)
  const first = offerFor(images, { url: images.url('/slow') })
  await device.offerRetained(first)
  await eventually(() => images.requests.length === 1, 5000, 'the first download under way')
  const second = offerFor(images, { version: '3.0.0' })
  await device.offerRetained(second)

  t.match(await eventually(finalStatus(device.statuses, 'failed'), 5000, 'failed'), { update_id: first.update_id, error: `superseded by update ${second.update_id}` })
  t.match(await eventually(finalStatus(device.statuses, 'complete'), 5000, 'complete'), { update_id: second.update_id })
  await eventually(async () => (await device.row())?.firmware_version === '3.0.0', 5000, 'the newer version recorded')
})

t.test("'revert' reboots but comes back with the old version", async (t) => {
  const images = await serveImage(t)
  const device = await startDevice(t, { updateBehaviour: 'revert' })
  await device.offerRetained(offerFor(images))

  await eventually(finalStatus(device.statuses, 'applying'), 5000, 'applying')
  await device.reconnected()
  await eventually(() => device.infos.length === 2, 5000, 'info after the reboot')
  t.same(device.infos.map(info => info.firmware_version), ['1.0.0', '1.0.0'], 'the old firmware_version after the reboot')
  await new Promise(resolve => setTimeout(resolve, 200))
  t.notOk(device.statuses.some(message => message.status === 'complete'), 'no complete')
})

t.test("'fail' reports a simulated failure after the download", async (t) => {
  const images = await serveImage(t)
  const device = await startDevice(t, { updateBehaviour: 'fail' })
  await device.offerRetained(offerFor(images))
  t.match(await eventually(finalStatus(device.statuses, 'failed'), 5000, 'failed'), { error: 'simulated failure' })
  t.equal(images.requests.length, 1, 'it did download')
})

t.test("'ignore' does not act on offers", async (t) => {
  const images = await serveImage(t)
  const device = await startDevice(t, { updateBehaviour: 'ignore' })
  const offer = offerFor(images)
  await device.command('p1', 'ping', { echo: 1 }) // subscribed: what follows arrives, in order
  await device.offerRetained(offer)
  await device.sendCommand('c1', 'update', offer)
  await device.command('p2', 'ping', { echo: 2 })
  await new Promise(resolve => setTimeout(resolve, 300))
  t.same(device.statuses, [], 'no update_status')
  t.same(device.replies.map(reply => reply.id), ['p1', 'p2'], 'no reply to the update command')
  t.equal(images.requests.length, 0, 'no download')
})
