// Hostile and malformed CONNECTs against a real Shepherd: garbage, truncated, oversized and
// non-UTF-8 passwords, wrong JSON types, control characters in the client id and username, and a
// CONNECT header that announces ~200 MB. Each is refused (with its return code and log line) or
// cut off, and the server keeps serving good devices; no promise rejection goes unhandled.
import t, { type Test } from 'tap'
import net from 'node:net'
import WebSocket from 'ws'
import { MAX_PASSWORD_BYTES } from '../../src/auth/device-authenticator.js'
import { devicePassword, type DeviceIdentity } from '../../src/device-client/device-client.js'
import { startTestServer, eventually, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'
import { asDevice, connackCode, credentialOf, expectRefusal, type Credential } from '../helpers/connect.js'

const unhandled: unknown[] = []
process.on('unhandledRejection', (reason) => {
  unhandled.push(reason)
  t.fail(`unhandled rejection: ${reason instanceof Error ? reason.stack ?? reason.message : String(reason)}`)
})

// ---- helpers ----

/** A good device still connects over both transports. */
async function assertStillServing (t: Test, ts: TestServer): Promise<void> {
  for (const url of [ts.wsUrl, ts.mqttUrl]) {
    const identity = await ts.pki.device(uniqueSerial())
    t.equal(await connackCode(url, asDevice(identity.serial, devicePassword(identity))), 0, `a good device still connects (${url.split(':')[0]})`)
  }
}

/** Opens a raw connection, writes `head` then `total` bytes of filler; answers how the server ended it. */
async function floodUntilClosed (url: string, head: Buffer, total: number): Promise<{ closedAfterMs: number | undefined, sent: number, received: Buffer }> {
  const chunk = Buffer.alloc(16 * 1024, 0x41)
  return await new Promise((resolve) => {
    let started = 0
    let sent = 0
    let received = Buffer.alloc(0)
    let done = false
    const finish = (closedAfterMs: number | undefined): void => {
      if (done) return
      done = true
      clearTimeout(timer)
      resolve({ closedAfterMs, sent, received })
    }
    const timer = setTimeout(() => { finish(undefined); destroy() }, 5000)
    let write: (bytes: Buffer) => boolean
    let destroy: () => void
    let isOpen: () => boolean
    const pump = (): void => {
      started = performance.now()
      write(head)
      const next = (): void => {
        while (sent < total && isOpen()) {
          sent += chunk.length
          if (!write(chunk)) { setTimeout(next, 1); return }
        }
      }
      next()
    }
    const onClose = (): void => { finish(performance.now() - started) }
    if (url.startsWith('ws')) {
      const socket = new WebSocket(url, 'mqtt')
      isOpen = () => socket.readyState === WebSocket.OPEN
      write = (bytes) => { socket.send(bytes); return socket.bufferedAmount < 256 * 1024 }
      destroy = () => { socket.terminate() }
      socket.on('open', pump)
      socket.on('message', (data: Buffer) => { received = Buffer.concat([received, data]) })
      socket.on('error', () => {})
      socket.on('close', onClose)
    } else {
      const { hostname, port } = new URL(url)
      const socket = net.connect(Number(port), hostname, pump)
      isOpen = () => !socket.destroyed && socket.writable
      write = (bytes) => socket.write(bytes)
      destroy = () => { socket.destroy() }
      socket.on('data', (data: Buffer) => { received = Buffer.concat([received, data]) })
      socket.on('error', () => {})
      socket.on('close', onClose)
    }
  })
}

// ---- the server for this file ----

const ts = await startTestServer(t)
const transports: Array<[string, string]> = [['WebSocket', ts.wsUrl], ['TCP', ts.mqttUrl]]

t.test('passwords that are no device credential → 4 (not_a_device_credential)', async (t) => {
  for (const [transport, url] of transports) {
    const identity = await ts.pki.device(uniqueSerial())
    const serial = identity.serial
    const good = devicePassword(identity)
    const cases: Array<[string, string | Buffer]> = [
      ['garbage bytes', Buffer.from([0x00, 0xff, 0xfe, 0x13, 0x37, 0x7b, 0x7d])],
      ['garbage starting with "{"', Buffer.from([0x7b, 0xff, 0x00, 0x22])],
      ['truncated JSON', good.slice(0, Math.floor(good.length / 2))],
      ['JSON array', `[${good}]`],
      ['plain text', 'password123'],
      // invalid UTF-8 (a lone continuation byte, an overlong NUL) in an otherwise complete credential
      ['invalid UTF-8', Buffer.concat([Buffer.from('{"x":"'), Buffer.from([0x80, 0xc0, 0x80]), Buffer.from(`",${good.slice(1)}`)])]
    ]
    for (const [name, password] of cases) {
      await t.test(`${transport}: ${name}`, async (t) => {
        await expectRefusal(t, ts, url, asDevice(serial, password), 4, 'not_a_device_credential', serial)
      })
    }
  }
  await assertStillServing(t, ts)
})

t.test('a password over 16 KiB → 4 (not_a_device_credential); 16 KiB exactly is accepted', async (t) => {
  for (const [transport, url] of transports) {
    const padded = (identity: DeviceIdentity, bytes: number): string => {
      const credential = { ...credentialOf(identity), pad: '' }
      credential.pad = 'p'.repeat(bytes - JSON.stringify(credential).length)
      const text = JSON.stringify(credential)
      t.equal(Buffer.byteLength(text), bytes)
      return text
    }
    const over = await ts.pki.device(uniqueSerial())
    await t.test(`${transport}: ${MAX_PASSWORD_BYTES + 1} bytes`, async (t) => {
      await expectRefusal(t, ts, url, asDevice(over.serial, padded(over, MAX_PASSWORD_BYTES + 1)), 4, 'not_a_device_credential', over.serial)
    })
    const limit = await ts.pki.device(uniqueSerial())
    t.equal(await connackCode(url, asDevice(limit.serial, padded(limit, MAX_PASSWORD_BYTES))), 0, `${transport}: ${MAX_PASSWORD_BYTES} bytes accepted`)

    // far beyond: the CONNECT exceeds the pre-authentication packet cap, the connection is cut
    const huge = await ts.pki.device(uniqueSerial())
    const mark = ts.logs.length
    t.equal(await connackCode(url, asDevice(huge.serial, padded(huge, 40 * 1024))), 'closed', `${transport}: a 40 KiB CONNECT is cut off without a CONNACK`)
    const logged = await eventually(() => ts.logs.slice(mark).find(line => /exceeds the limit/.test(JSON.stringify(line.err ?? ''))), 2000, 'the packet-limit log line').catch(() => undefined)
    t.ok(logged, 'the server logged the packet over the limit')
  }
  await assertStillServing(t, ts)
})

t.test('numbers, booleans and strings where other types belong → 4', async (t) => {
  for (const [transport, url] of transports) {
    const cases: Array<[string, Credential, string]> = [
      ['cert: 123', { cert: 123 }, 'bad_encoding'],
      ['signature: true', { signature: true }, 'bad_encoding'],
      ['chain: "x"', { chain: 'x' }, 'bad_encoding'],
      ['chain: [123]', { chain: [123] }, 'bad_encoding'],
      ['chain: {}', { chain: {} }, 'bad_encoding'],
      ['timestamp: {}', { timestamp: {} }, 'bad_timestamp'],
      ['timestamp: true', { timestamp: true }, 'bad_timestamp'],
      ['timestamp: [1]', { timestamp: [1] }, 'bad_timestamp'],
      ['cert: null', { cert: null }, 'bad_encoding'],
      ['cert: {"der": …}', { cert: { der: 'AAAA' } }, 'bad_encoding']
    ]
    for (const [name, patch, reason] of cases) {
      await t.test(`${transport}: ${name}`, async (t) => {
        const identity = await ts.pki.device(uniqueSerial())
        await expectRefusal(t, ts, url, asDevice(identity.serial, { ...credentialOf(identity), ...patch }), 4, reason, identity.serial)
      })
    }
  }
  await assertStillServing(t, ts)
})

t.test('NUL and control characters in the client id or username → 2', async (t) => {
  for (const [transport, url] of transports) {
    for (const control of ['\u0000', '\n', '\r', '\u0007', '\u001b[2J', '\u007f', '\u2028']) {
      const name = [...control].map(c => `U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}`).join(' ')
      await t.test(`${transport}: ${name} in the username (and client id)`, async (t) => {
        const identity = await ts.pki.device(uniqueSerial())
        const bad = `${identity.serial}${control}`
        await expectRefusal(t, ts, url, { clientId: bad, username: bad, password: devicePassword({ ...identity, serial: bad }) }, 2, 'bad_serial', bad)
      })
      await t.test(`${transport}: ${name} in the client id only`, async (t) => {
        const identity = await ts.pki.device(uniqueSerial())
        await expectRefusal(t, ts, url, { clientId: `${control}${identity.serial}`, username: identity.serial, password: devicePassword(identity) }, 2, 'client_id_mismatch', identity.serial)
      })
    }
  }
  await assertStillServing(t, ts)
})

t.test('a CONNECT announcing ~200 MB is cut off before the server buffers it', async (t) => {
  // 0x10 = CONNECT; remaining length 0xFF 0xFF 0xFF 0x5F = 201,326,591 bytes
  const head = Buffer.from([0x10, 0xff, 0xff, 0xff, 0x5f])
  for (const [transport, url] of transports) {
    await t.test(transport, async (t) => {
      const mark = ts.logs.length
      const result = await floodUntilClosed(url, head, 512 * 1024)
      t.ok(result.closedAfterMs !== undefined, 'the server closed the connection')
      t.ok(result.closedAfterMs !== undefined && result.closedAfterMs < 2000, `closed within 2 s (${result.closedAfterMs?.toFixed(0)} ms, ${result.sent} bytes sent)`)
      t.equal(result.received.length, 0, 'no CONNACK for it')
      if (transport === 'TCP') {
        const logged = await eventually(() => ts.logs.slice(mark).find(line => /packet of 201326591 bytes exceeds the limit/.test(JSON.stringify(line.err ?? ''))), 2000, 'the packet-limit log line').catch(() => undefined)
        t.ok(logged, 'the server logged the 201326591-byte packet as over the limit')
        t.ok(ts.logs.slice(mark).some(line => line.reason === 'packet_too_large' && line.level === 40 && typeof line.remote === 'string'), 'a warning with the reason and the remote address')
      } else {
        // the byte count before authentication usually closes it before the parser reads the header
        const refusals = await eventually(() => {
          const lines = ts.logs.slice(mark).filter(line => line.reason === 'too_much_before_connect' || line.reason === 'packet_too_large')
          return lines.length > 0 ? lines : undefined
        }, 2000, 'the refusal log line').catch(() => [])
        t.equal(refusals.length, 1, `one refusal logged (${refusals.map(line => String(line.reason)).join(', ')})`)
        t.ok(refusals.every(line => line.level === 40 && typeof line.remote === 'string'), 'a warning with the remote address')
      }
    })
  }
  await assertStillServing(t, ts)
})

t.test('no unhandled rejection', async (t) => {
  await new Promise(resolve => setTimeout(resolve, 100)) // let late rejections surface
  t.same(unhandled, [], 'none')
})
