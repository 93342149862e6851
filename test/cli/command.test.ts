// `shepherd command SERIAL ping|identify|reboot [--wait]` as its own process against a running
// server: on PostgreSQL the CLI stores the command and NOTIFYs the nodes, one of which delivers
// it; on PGlite it asks the running server over the control socket. --wait prints the answer.
import t from 'tap'
import type { Test } from 'tap'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { connectDevice } from '../../src/device-client/device-client.js'
import { runShepherd } from '../helpers/cli.js'
import { DATABASES, eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

/** How the CLI reaches this server: DATABASE_URL on PostgreSQL, DATA_DIR (control socket) on PGlite. */
async function cliEnv (t: Test, ts: TestServer): Promise<Record<string, string>> {
  if (ts.databaseUrl === undefined) return { DATA_DIR: ts.dataDir }
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-cli-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return { DATABASE_URL: ts.databaseUrl, DATA_DIR: dir }
}

for (const database of DATABASES) {
  t.test(`shepherd command against a running server on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })
    const env = await cliEnv(t, ts)

    t.test('ping --wait and reboot --wait print the device\'s answer; the device comes back', async (t) => {
      const serial = uniqueSerial('cli-cmd')
      const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), reconnectPeriodMs: 0, rebootDelayMs: 200 })
      t.teardown(() => device.mqtt.end(true))
      const { connected_at: firstConnect } = await eventually(async () => { const r = await ts.api('GET', `/api/devices/${serial}`); return r.body?.status === 'online' && r.body }, 5000, 'online')

      const ping = await runShepherd(['command', serial, 'ping', '--wait', '--echo', 'marco'], { env })
      t.equal(ping.code, 0, `exit 0 (stderr: ${ping.stderr.trim()})`)
      t.match(ping.stdout, new RegExp(`command [0-9a-f-]{36} \\(ping\\) (sent to|queued for) ${serial}`))
      t.match(ping.stdout, /ping ok in \d+ ms: \{"echo":"marco"\}/)

      const reboot = await runShepherd(['command', serial, 'reboot', '--wait'], { env })
      t.equal(reboot.code, 0, `exit 0 (stderr: ${reboot.stderr.trim()})`)
      t.match(reboot.stdout, /reboot ok in \d+ ms: \{"rebooting":true\}/)
      await eventually(async () => {
        const { body } = await ts.api('GET', `/api/devices/${serial}`)
        return body.status === 'online' && body.disconnected_at !== null && body.connected_at > firstConnect
      }, 5000, 'the device rebooted: went down and came back')
    })

    t.test('offline: queued, and --wait gives up after --timeout; failures exit 1, bad usage 2', async (t) => {
      const serial = uniqueSerial('cli-off')
      await ts.server.db.knex('devices').insert({ serial })
      const queued = await runShepherd(['command', serial, 'identify'], { env })
      t.equal(queued.code, 0)
      t.match(queued.stdout, `queued for ${serial}: delivered`)
      const waited = await runShepherd(['command', serial, 'ping', '--wait', '--timeout', '1'], { env })
      t.equal(waited.code, 1)
      t.match(waited.stderr, new RegExp(`no answer from ${serial} within 1 s; the command is still queued`))
      const expired = await runShepherd(['command', serial, 'ping', '--wait', '--ttl', '1', '--timeout', '10'], { env })
      t.equal(expired.code, 1)
      t.match(expired.stderr, /ping expired before/)
      t.equal((await ts.api('GET', `/api/devices/${serial}/commands`)).body.items.length, 3, 'all three stored')

      const unknown = await runShepherd(['command', 'nobody-here', 'ping'], { env })
      t.equal(unknown.code, 1)
      t.match(unknown.stderr, 'no device with serial nobody-here')
      await ts.api('POST', `/api/devices/${serial}/revoke`)
      const revoked = await runShepherd(['command', serial, 'ping'], { env })
      t.equal(revoked.code, 1)
      t.match(revoked.stderr, /revoked/)
      for (const args of [['command', serial, 'selfdestruct'], ['command', serial], ['command', 'bad serial', 'ping'], ['command', serial, 'reboot', '--echo', 'x'], ['command', serial, 'ping', '--ttl', '0']]) {
        const result = await runShepherd(args, { env })
        t.equal(result.code, 2, args.join(' '))
        t.match(result.stderr, /Usage: shepherd/, 'with the help text')
      }
    })
  })
}
