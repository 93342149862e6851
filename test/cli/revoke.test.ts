// `shepherd revoke SERIAL` as its own process against a running server: on PostgreSQL the CLI
// updates the row and NOTIFYs every node; on PGlite it asks the running server over the control
// socket in DATA_DIR. Either way the connected device is kicked at once (offline/revoked) and
// refused from then on (CONNACK 5). Exit status 0 / 1 (unknown serial) / 2 (bad usage).
import t from 'tap'
import type { Test } from 'tap'
import { spawn } from 'node:child_process'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { connectDevice } from '../../src/device-client/device-client.js'
import { deviceTopic } from '../../src/topics.js'
import { retainedJson } from '../helpers/retained.js'
import type { Device } from '../../src/devices/types.js'
import { DATABASES, eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')

interface CliResult { code: number | null, stdout: string, stderr: string, exitedAt: number }

/** Runs `node bin/shepherd ...args` with exactly `env` (plus PATH and HOME). */
async function shepherd (args: string[], env: Record<string, string>): Promise<CliResult> {
  const child = spawn(process.execPath, ['bin/shepherd', ...args], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  let stdout = ''
  let stderr = ''
  child.stdout.on('data', (chunk: Buffer) => { stdout += chunk.toString() })
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  const timer = setTimeout(() => child.kill('SIGKILL'), 60_000)
  return await new Promise((resolve, reject) => {
    child.on('error', reject)
    child.on('exit', (code) => {
      const exitedAt = Date.now()
      clearTimeout(timer)
      // the pipes may still hold the last output
      child.on('close', () => { resolve({ code, stdout, stderr, exitedAt }) })
    })
  })
}

const retainedStatus = (ts: TestServer, serial: string): Promise<Record<string, unknown> | undefined> => retainedJson(ts, deviceTopic(serial, 'status'))

async function emptyDataDir (t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-cli-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

/** How the CLI reaches this server: DATABASE_URL on PostgreSQL, DATA_DIR (control socket) on PGlite. */
async function cliEnv (t: Test, ts: TestServer): Promise<Record<string, string>> {
  if (ts.databaseUrl !== undefined) return { DATABASE_URL: ts.databaseUrl, DATA_DIR: await emptyDataDir(t) }
  return { DATA_DIR: ts.dataDir }
}

for (const database of DATABASES) {
  t.test(`shepherd revoke against a running server on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })

    t.test('revokes and kicks a connected device within 1 s; a reconnect gets CONNACK 5', async (t) => {
      const serial = uniqueSerial('cli')
      const identity = await ts.pki.device(serial)
      // explicit timestamps: the reconnect below must not repeat this one (a replay gets CONNACK 4)
      const device = await connectDevice({ url: ts.mqttUrl, identity, timestamp: Math.floor(Date.now() / 1000) - 20 })
      t.teardown(() => device.mqtt.end(true))
      await eventually(async () => (await retainedStatus(ts, serial))?.status === 'online', 5000, 'online')
      let closedAt: number | undefined
      device.mqtt.on('close', () => { closedAt ??= Date.now() })

      const result = await shepherd(['revoke', serial], await cliEnv(t, ts))
      t.equal(result.code, 0, `exit status 0 (stderr: ${result.stderr.trim()})`)
      t.match(result.stdout, `device ${serial} revoked`, 'says so on stdout')
      const closedWithin = await eventually(() => closedAt !== undefined ? closedAt - result.exitedAt : undefined, 1000, 'the device connection to close within 1 s of the CLI exiting')
      t.ok(closedWithin < 1000, `disconnected ${closedWithin} ms after the CLI exited`)
      const status = await eventually(async () => { const s = await retainedStatus(ts, serial); return s?.status === 'offline' ? s : undefined }, 2000, 'offline status')
      t.match(status, { status: 'offline', reason: 'revoked' }, 'retained status offline/revoked')
      await ts.server.settled()
      t.match(await ts.server.db.knex<Device>('devices').where({ serial }).first(), { revoked: true, status: 'offline', disconnect_reason: 'revoked', node_id: null }, 'row revoked, offline/revoked')

      const refusal = await connectDevice({ url: ts.mqttUrl, identity, timestamp: Math.floor(Date.now() / 1000) - 5 })
        .then(d => { d.mqtt.end(true); return undefined }, (error: Error & { code?: number }) => error)
      t.equal(refusal?.code, 5, 'a reconnect is refused with CONNACK 5 (not authorized)')
      t.equal((await retainedStatus(ts, serial))?.reason, 'revoked', 'the refused reconnect changed no status')
    })

    t.test('revokes a known device that is offline', async (t) => {
      const serial = uniqueSerial('cli-off')
      const device = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(serial), timestamp: Math.floor(Date.now() / 1000) - 20 })
      await device.close()
      await eventually(async () => (await retainedStatus(ts, serial))?.reason === 'clean', 5000, 'offline/clean')
      const result = await shepherd(['revoke', serial], await cliEnv(t, ts))
      t.equal(result.code, 0, 'exit status 0')
      t.equal((await ts.server.db.knex<Device>('devices').where({ serial }).first())?.revoked, true, 'row revoked')
      t.equal((await retainedStatus(ts, serial))?.reason, 'clean', 'the status of an offline device is left alone')
      const refusal = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(serial), timestamp: Math.floor(Date.now() / 1000) - 5 })
        .then(d => { d.mqtt.end(true); return undefined }, (error: Error & { code?: number }) => error)
      t.equal(refusal?.code, 5, 'it can no longer connect (CONNACK 5)')
    })

    t.test('an unknown serial exits 1 with a message', async (t) => {
      const serial = uniqueSerial('nobody')
      const result = await shepherd(['revoke', serial], await cliEnv(t, ts))
      t.equal(result.code, 1, 'exit status 1')
      t.match(result.stderr, `no device with serial ${serial}`, 'the message names the serial')
      t.notMatch(result.stderr, 'Usage:', 'no usage text for a failure that is not bad usage')
      t.equal(await ts.server.db.knex('devices').where({ serial }).first(), undefined, 'no row was created')
    })
  })
}

t.test('bad usage exits 2 with the usage text', async (t) => {
  const dataDir = await emptyDataDir(t)
  const cases: Array<{ args: string[], what: string, says: RegExp }> = [
    { args: ['revoke'], what: 'no serial', says: /expected 1 argument/ },
    { args: ['revoke', 'a', 'b'], what: 'two serials', says: /expected 1 argument/ },
    { args: ['revoke', 'bad/serial'], what: 'a serial with a slash', says: /not a valid serial/ },
    { args: ['revoke', 'x'.repeat(65)], what: 'a 65-character serial', says: /not a valid serial/ }
  ]
  const results = await Promise.all(cases.map(async c => await shepherd(c.args, { DATA_DIR: dataDir })))
  cases.forEach((c, i) => {
    const result = results[i]!
    t.equal(result.code, 2, `${c.what}: exit status 2`)
    t.match(result.stderr, c.says, `${c.what}: says what is wrong`)
    t.match(result.stderr, /Usage: shepherd <command>/, `${c.what}: prints the usage text`)
    t.match(result.stderr, /revoke SERIAL/, `${c.what}: the usage text shows revoke`)
  })
})
