import t, { type Test } from 'tap'
import net from 'node:net'
import { mkdtemp, readFile, stat, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { loadConfig } from '../../src/config.js'
import { createLogger } from '../../src/logger.js'
import { createServer } from '../../src/server.js'
import { StartupError } from '../../src/errors.js'
import { spawn, type ChildProcess } from 'node:child_process'
import { runShepherd, SHEPHERD_BIN } from '../helpers/cli.js'

const silent = createLogger('silent')

async function occupiedPort (t: Test): Promise<number> {
  const blocker = net.createServer()
  await new Promise<void>(resolve => blocker.listen(0, '127.0.0.1', resolve))
  t.teardown(() => new Promise<void>(resolve => blocker.close(() => resolve())))
  return (blocker.address() as net.AddressInfo).port
}

t.test('outside production a missing Fleet CA is created in priv/ca, with one log line', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-start-'))
  const lines: string[] = []
  const logger = createLogger('info', { write: (line: string) => { lines.push(line) } })
  const config = loadConfig({ DATA_DIR: path.join(dir, 'data'), HOST: '127.0.0.1' })
  const server = await createServer({ ...config, fleetCaPath: path.join(dir, 'priv/ca/fleet_ca.pem') }, { logger, inMemoryDatabase: true })
  await server.close()
  t.equal((await stat(path.join(dir, 'priv/ca/fleet_ca_key.pem'))).mode & 0o777, 0o600)
  t.match(await readFile(path.join(dir, 'priv/ca/fleet_ca.pem'), 'utf8'), /BEGIN CERTIFICATE/)
  t.equal(lines.filter(line => line.includes('created a development Fleet CA')).length, 1)
})

t.test('in production a missing Fleet CA stops the start with the settings to set', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-start-'))
  const config = loadConfig({ NODE_ENV: 'production', DATA_DIR: dir, FLEET_CA_PATH: path.join(dir, 'missing.pem') })
  const error = await t.rejects(createServer(config, { logger: silent, inMemoryDatabase: true }), StartupError)
  t.match(String(error), /FLEET_CA_PEM.*FLEET_CA_PATH/)
})

t.test('a port in use is a clear error naming the setting', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-start-'))
  const busy = await occupiedPort(t)
  const caDir = path.join(dir, 'ca')
  t.equal((await runShepherd(['gen-ca', '--dir', caDir])).code, 0)
  const env = { DATA_DIR: path.join(dir, 'data'), FLEET_CA_PATH: path.join(caDir, 'fleet_ca.pem'), HOST: '127.0.0.1' }

  const mqttBusy = await runShepherd(['start'], { env: { ...env, PORT: '0', MQTT_PORT: String(busy) } })
  t.equal(mqttBusy.code, 1)
  t.match(mqttBusy.stderr, new RegExp(`MQTT_PORT=${busy}: port ${busy} .*already in use; set MQTT_PORT`))

  const httpBusy = await runShepherd(['start'], { env: { ...env, PORT: String(busy), MQTT_PORT: '0' } })
  t.equal(httpBusy.code, 1)
  t.match(httpBusy.stderr, new RegExp(`PORT=${busy}: port ${busy} .*already in use; set PORT`))

  const badConfig = await runShepherd(['start'], { env: { ...env, PORT: 'x', MQTT_PORT: 'y' } })
  t.equal(badConfig.code, 1)
  t.match(badConfig.stderr, /PORT must be .*\n.*MQTT_PORT must be/s)
})

t.test('unreadable or unusable TLS files, a Fleet CA that does not parse and a HOST that is no address stop the start naming the setting', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-start-'))
  const caDir = path.join(dir, 'ca')
  t.equal((await runShepherd(['gen-ca', '--dir', caDir])).code, 0)
  const junk = path.join(dir, 'junk.pem')
  await writeFile(junk, 'not a PEM file\n')
  const env = { DATA_DIR: path.join(dir, 'data'), FLEET_CA_PATH: path.join(caDir, 'fleet_ca.pem'), HOST: '127.0.0.1', PORT: '0', MQTT_PORT: '0' }
  for (const [more, pattern] of [
    [{ TLS_CERT: path.join(dir, 'missing.pem'), TLS_KEY: junk }, /TLS_CERT=.*missing\.pem cannot be read/],
    [{ TLS_CERT: junk, TLS_KEY: junk }, /TLS_CERT=.* and TLS_KEY=.* are not a PEM certificate and its private key/],
    [{ FLEET_CA_PATH: junk }, /the Fleet CA \(FLEET_CA_PEM, or the file FLEET_CA_PATH names\) is not a usable CA certificate/],
    [{ HOST: 'nosuchhost.invalid' }, /HOST=nosuchhost\.invalid: not an address of this machine/]
  ] as const) {
    const started = await runShepherd(['start'], { env: { ...env, ...more } })
    t.equal(started.code, 1, JSON.stringify(more))
    t.match(started.stderr, pattern)
    t.notMatch(started.stderr, /^\s+at /m, 'a message, not a stack trace')
  }
})

/** `shepherd start` on the embedded defaults in a fresh directory; `output()` is all it printed so far. */
async function spawnStart (): Promise<{ child: ChildProcess, output: () => string, exited: Promise<number | null>, until: (text: string, pollMs: number) => Promise<void> }> {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-start-'))
  const child = spawn(process.execPath, [SHEPHERD_BIN, 'start'], {
    cwd: dir, env: { PATH: process.env.PATH, HOST: '127.0.0.1', PORT: '0', MQTT_PORT: '0', LOG_LEVEL: 'info' }
  })
  let output = ''
  child.stdout!.on('data', (chunk: Buffer) => { output += chunk.toString() })
  child.stderr!.on('data', (chunk: Buffer) => { output += chunk.toString() })
  const exited = new Promise<number | null>(resolve => child.on('exit', code => resolve(code)))
  const until = async (text: string, pollMs: number): Promise<void> => {
    const deadline = Date.now() + 30_000
    while (!output.includes(text) && Date.now() < deadline) await new Promise(resolve => setTimeout(resolve, pollMs))
  }
  return { child, output: () => output, exited, until }
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  t.test(`shepherd start serves until ${signal}, then exits 0`, async (t) => {
    const { child, output, exited, until } = await spawnStart()
    await until('Shepherd listening', 100)
    t.match(output(), /created a development Fleet CA/)
    t.match(output(), /Shepherd listening/)
    child.kill(signal)
    t.equal(await exited, 0)
    t.match(output(), /devices marked offline \(server_shutdown\)/)
  })
}

t.test('a SIGTERM while the server starts (migrating) is honoured once it has started: exit 0, not killed', async (t) => {
  const { child, output, exited, until } = await spawnStart()
  await until('database migrated', 20)
  t.notMatch(output(), /Shepherd listening/, 'still starting when signalled')
  child.kill('SIGTERM')
  t.equal(await exited, 0)
  t.match(output(), /shutting down \(asked while starting\)/)
  t.notMatch(output(), /Shepherd listening/, 'it never opened its ports')
})
