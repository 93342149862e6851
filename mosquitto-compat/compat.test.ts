// Shepherd with the real Mosquitto tools (Debian's mosquitto-clients and mosquitto): an observer
// made by `shepherd observer add` reads the retained status and info and the $SYS figures with
// mosquitto_sub; wrong passwords are refused; an observer's mosquitto_pub is refused and changes
// nothing; a user of a file made by mosquitto_passwd logs in; a stock Mosquitto bridge with the
// shipped example configuration mirrors shepherd/# into a site broker, live.
import { execFile, spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { connectDevice } from '../src/device-client/device-client.js'
import { deviceTopic } from '../src/topics.js'
import { runShepherd } from '../test/helpers/cli.js'
import { uniqueSerial } from '../test/helpers/pki.js'
import { eventually, startTestServer } from '../test/helpers/server.js'

interface Run { code: number, stdout: string, stderr: string }

// Debian installs the broker in /usr/sbin, which is not on every PATH
const MOSQUITTO = existsSync('/usr/sbin/mosquitto') ? '/usr/sbin/mosquitto' : 'mosquitto'

function run (command: string, args: string[], timeoutMs = 15_000): Promise<Run> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: timeoutMs }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : 1, stdout, stderr })
    })
  })
}

async function freePort (): Promise<number> {
  const server = net.createServer()
  await new Promise<void>(resolve => server.listen(0, '127.0.0.1', resolve))
  const { port } = server.address() as net.AddressInfo
  await new Promise(resolve => server.close(resolve))
  return port
}

t.test('the Mosquitto tools against Shepherd', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-compat-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const passwordFile = path.join(dir, 'passwd')
  t.equal((await run('mosquitto_passwd', ['-c', '-b', passwordFile, 'node-red', 'file-secret'])).code, 0, 'mosquitto_passwd made the file')
  const ts = await startTestServer(t, { env: { MQTT_PASSWORD_FILE: passwordFile }, sysIntervalMs: 500 })
  const port = new URL(ts.mqttUrl).port

  // the CLI reaches the server's database: PostgreSQL directly, PGlite through the server's control socket
  const cliEnv = { DATA_DIR: ts.dataDir, ...(ts.databaseUrl === undefined ? {} : { DATABASE_URL: ts.databaseUrl }) }
  const added = await runShepherd(['observer', 'add', 'explorer'], { env: cliEnv })
  t.equal(added.code, 0, added.stderr)
  const password = added.stdout.trim().split('\n').at(-1)!
  t.match(password, /^[A-Za-z0-9_-]{24}$/, 'the password alone on the last line')
  const listed = await runShepherd(['observer', 'list'], { env: cliEnv })
  t.match(listed.stdout, /^explorer\s+\d{4}-/m)
  const login = ['-h', '127.0.0.1', '-p', port, '-V', 'mqttv311']
  const asObserver = [...login, '-u', 'explorer', '-P', password]

  const serial = uniqueSerial('compat')
  const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), info: { firmware_version: '2.1.0', firmware_target: 'rpi4' } })
  t.teardown(() => device.close())
  await eventually(async () => (await ts.api('GET', `/api/devices/${serial}`)).body?.firmware_version === '2.1.0', 5000, 'info recorded')

  t.test('mosquitto_sub as an observer: the retained status and info', async (t) => {
    const sub = await run('mosquitto_sub', [...asObserver, '-t', deviceTopic(serial, 'status'), '-t', deviceTopic(serial, 'info'), '-v', '-C', '2', '-W', '10'])
    t.equal(sub.code, 0, sub.stderr)
    const lines = new Map(sub.stdout.trim().split('\n').map(line => [line.slice(0, line.indexOf(' ')), JSON.parse(line.slice(line.indexOf(' ') + 1))]))
    t.match(lines.get(deviceTopic(serial, 'status')), { status: 'online' })
    t.match(lines.get(deviceTopic(serial, 'info')), { firmware_version: '2.1.0', firmware_target: 'rpi4' })
  })

  t.test('mosquitto_sub: $SYS figures', async (t) => {
    const topics = ['version', 'uptime', 'clients/connected', 'messages/received', 'messages/sent'].map(name => `$SYS/broker/${name}`)
    const sub = await run('mosquitto_sub', [...asObserver, ...topics.flatMap(topic => ['-t', topic]), '-v', '-C', String(topics.length), '-W', '10'])
    t.equal(sub.code, 0, sub.stderr)
    const values = new Map(sub.stdout.trim().split('\n').map(line => [line.slice(0, line.indexOf(' ')), line.slice(line.indexOf(' ') + 1)]))
    t.match(values.get('$SYS/broker/version'), /^shepherd version /)
    t.match(values.get('$SYS/broker/uptime'), /^\d+ seconds$/)
    t.match(values.get('$SYS/broker/clients/connected'), /^\d+$/)
    t.match(values.get('$SYS/broker/messages/received'), /^\d+$/)
    t.match(values.get('$SYS/broker/messages/sent'), /^\d+$/)
  })

  t.test('wrong passwords are refused', async (t) => {
    const wrong = await run('mosquitto_sub', [...login, '-u', 'explorer', '-P', 'not-the-password', '-t', 'shepherd/#', '-C', '1', '-W', '5'])
    t.not(wrong.code, 0)
    t.match(wrong.stderr, /Connection Refused: bad user name or password/)
    const anonymous = await run('mosquitto_sub', [...login, '-t', 'shepherd/#', '-C', '1', '-W', '5'])
    t.not(anonymous.code, 0, 'no anonymous access')
  })

  t.test('an observer\'s mosquitto_pub is refused: nothing reaches the device', async (t) => {
    const received: string[] = []
    device.mqtt.on('message', (topic) => { received.push(topic) })
    const pub = await run('mosquitto_pub', [...asObserver, '-t', deviceTopic(serial, 'commands'), '-m', '{"id":"x","command":"reboot"}', '-q', '1'])
    t.not(pub.code, 0, `mosquitto_pub fails (${pub.stderr.trim()})`)
    await eventually(() => ts.logs.some(line => line.msg === 'observer publish refused; connection closed' && line.topic === deviceTopic(serial, 'commands')), 3000, 'the refusal logged')
    await new Promise(resolve => setTimeout(resolve, 200))
    t.same(received.filter(topic => topic === deviceTopic(serial, 'commands')), [], 'the device got no command')
    t.equal((await ts.api('GET', `/api/devices/${serial}`)).body.status, 'online')
  })

  t.test('a mosquitto_passwd user is an observer', async (t) => {
    const sub = await run('mosquitto_sub', [...login, '-u', 'node-red', '-P', 'file-secret', '-t', deviceTopic(serial, 'status'), '-C', '1', '-W', '10'])
    t.equal(sub.code, 0, sub.stderr)
    t.match(JSON.parse(sub.stdout), { status: 'online' })
  })

  t.test('a stock Mosquitto bridge mirrors shepherd/# into a site broker', async (t) => {
    const sitePort = await freePort()
    const example = await readFile(path.join(import.meta.dirname, 'bridge.conf.example'), 'utf8')
    const config = example
      .replace(/^listener .*$/m, `listener ${sitePort} 127.0.0.1\nallow_anonymous true`)
      .replace(/^address .*$/m, `address 127.0.0.1:${port}`)
      .replace(/^remote_password .*$/m, `remote_password ${password}`)
      .replace(/^remote_username .*$/m, 'remote_username explorer')
    t.notMatch(config, /CHANGE-ME/, 'every placeholder filled in')
    const configFile = path.join(dir, 'bridge.conf')
    await writeFile(configFile, config)
    const mosquitto = spawn(MOSQUITTO, ['-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] })
    let log = ''
    mosquitto.stderr.on('data', (chunk: Buffer) => { log += chunk.toString() })
    t.teardown(() => { mosquitto.kill() })
    await eventually(() => ts.logs.some(line => line.msg === 'observer connected' && line.observer === 'explorer' && String(line.clientId).endsWith('.shepherd')), 10_000, `the bridge connected (${log})`)

    const site = ['-h', '127.0.0.1', '-p', String(sitePort)]
    const retained = await run('mosquitto_sub', [...site, '-t', deviceTopic(serial, 'status'), '-C', '1', '-W', '10'])
    t.equal(retained.code, 0, retained.stderr)
    t.match(JSON.parse(retained.stdout), { status: 'online' }, 'the retained status, on the site broker')
    const live = run('mosquitto_sub', [...site, '-t', deviceTopic(serial, 'metrics'), '-C', '1', '-W', '10'])
    await new Promise(resolve => setTimeout(resolve, 500))
    await device.publishMetrics([{ name: 'temp', value: 23.5 }])
    const metrics = await live
    t.equal(metrics.code, 0, metrics.stderr)
    t.match(JSON.parse(metrics.stdout), { metrics: [{ name: 'temp', value: 23.5 }] }, 'live messages, on the site broker')
    t.notOk(ts.logs.some(line => line.msg === 'observer publish refused; connection closed' && String(line.clientId).endsWith('.shepherd')), 'the bridge\'s own notices are not refusals')
  })
})
