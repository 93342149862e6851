// Observer accounts through the real broker with mqtt.js: read-only logins that see the fleet's
// topics and $SYS, may not publish (the connection is closed), may not take a device's session,
// get clean sessions; users of a mosquitto_passwd file (made by the real binary), read again when
// the file changes; the passwd parser against files of both hash types.
import { execFileSync } from 'node:child_process'
import { mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import t from 'tap'
import type { Test } from 'tap'
import { connectDevice } from '../../src/device-client/device-client.js'
import { parsePasswordFile, verifyPasswdHash } from '../../src/observers/passwd-file.js'
import { deviceTopic } from '../../src/topics.js'
import { uniqueSerial } from '../helpers/pki.js'
import { eventually, startTestServer, type TestServer } from '../helpers/server.js'
import { connectPacket, rawConnackCode, subackOf } from '../helpers/connect.js'

async function mosquittoPasswd (file: string, user: string, password: string, sha512 = false): Promise<void> {
  const exists = await readFile(file).then(() => true, () => false)
  execFileSync('mosquitto_passwd', [...(exists ? [] : ['-c']), ...(sha512 ? ['-H', 'sha512'] : []), '-b', file, user, password])
}

async function observer (t: Test, ts: TestServer, username: string, password: string, options: Partial<IClientOptions> = {}): Promise<MqttClient> {
  const client = await mqtt.connectAsync(ts.mqttUrl, { username, password, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...options })
  t.teardown(() => client.end(true))
  return client
}

/** The CONNACK return code of a refused login. */
async function refusedWith (ts: TestServer, options: Partial<IClientOptions>): Promise<number | undefined> {
  const error = await mqtt.connectAsync(ts.mqttUrl, { protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5000, ...options }).then(
    (client) => { client.end(true); return undefined },
    (refusal: Error & { code?: number }) => refusal
  )
  return error?.code
}


t.test('mosquitto_passwd files: both hash types, comments, bad lines', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-passwd-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'passwd')
  await mosquittoPasswd(file, 'pbkdf2-user', 'first secret')
  await mosquittoPasswd(file, 'sha-user', 'second secret', true)
  const text = await readFile(file, 'utf8')
  t.match(text, /^pbkdf2-user:\$7\$\d+\$/m, 'mosquitto_passwd makes $7$ by default')
  t.match(text, /^sha-user:\$6\$/m, 'and $6$ with -H sha512')
  const parsed = parsePasswordFile(`# a comment\n\n${text}plain:secret\nbroken\nodd:$5$abc$def\nshort:$7$x$abc$def\n`)
  t.same([...parsed.users.keys()], ['pbkdf2-user', 'sha-user'])
  t.equal(parsed.problems.length, 4, parsed.problems.join('; '))
  t.match(parsed.problems, [/plain.*plain-text passwords are not accepted/, /line \d+: expected user:hash/, /unsupported hash type \$5\$/, /iteration count/])
  t.ok(await verifyPasswdHash(parsed.users.get('pbkdf2-user')!, Buffer.from('first secret')))
  t.ok(await verifyPasswdHash(parsed.users.get('sha-user')!, Buffer.from('second secret')))
  t.notOk(await verifyPasswdHash(parsed.users.get('sha-user')!, Buffer.from('first secret')))
})

t.test('observers', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-passwd-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const passwordFile = path.join(dir, 'passwd')
  await mosquittoPasswd(passwordFile, 'grafana', 'from-the-file')
  const ts = await startTestServer(t, { env: { MQTT_PASSWORD_FILE: passwordFile }, sysIntervalMs: 200, observerRecheckMs: 200 })
  const created = await ts.server.observers.add('explorer')
  if (!created.ok) throw new Error('observer not created')
  const serial = uniqueSerial('watched')
  const device = await connectDevice({ url: ts.mqttUrl, identity: await ts.pki.device(serial), info: { firmware_version: '1.0.0' } })
  t.teardown(() => device.close())
  await eventually(async () => (await ts.api('GET', `/api/devices/${serial}`)).body?.firmware_version === '1.0.0', 5000, 'info recorded')

  t.test('an observer sees the retained status and info, and $SYS/broker figures only', async (t) => {
    const client = await observer(t, ts, 'explorer', created.password)
    const seen = new Map<string, string>()
    client.on('message', (topic, payload) => { seen.set(topic, payload.toString()) })
    const filters = ['shepherd/#', '$SYS/#', 'shepherd/devices/+/status', 'shepherd', '#', 'other/topic', '$shepherd/events/#', 'shepherdX/#']
    const granted = await subackOf(client, Object.fromEntries(filters.map(filter => [filter, { qos: 0 }])))
    t.same(granted, [0, 0, 0, 0, 128, 128, 128, 128], 'inside shepherd/# and $SYS/# only (the parent level shepherd matches shepherd/#)')
    await eventually(() => seen.has(deviceTopic(serial, 'status')) && seen.has(deviceTopic(serial, 'info')) && seen.has('$SYS/broker/uptime'), 5000, 'retained status, info and $SYS')
    t.match(JSON.parse(seen.get(deviceTopic(serial, 'status'))!), { status: 'online' })
    t.match(JSON.parse(seen.get(deviceTopic(serial, 'info'))!), { firmware_version: '1.0.0' })
    t.match(seen.get('$SYS/broker/version'), /^shepherd version \d+\.\d+\.\d+/)
    t.match(seen.get('$SYS/broker/uptime'), /^\d+ seconds$/)
    await eventually(() => Number(seen.get('$SYS/broker/clients/connected')) >= 2, 3000, 'clients/connected refreshed: the device and this observer')
    t.match(seen.get('$SYS/broker/messages/received'), /^\d+$/)
    t.match(seen.get('$SYS/broker/messages/sent'), /^\d+$/)
    t.notOk([...seen.keys()].some(topic => topic.startsWith('$SYS/') && !topic.startsWith('$SYS/broker/')), 'not the broker\'s internal $SYS/<id>/… topics')
    await device.publishMetrics([{ name: 'temp', value: 21 }])
    await eventually(() => seen.has(deviceTopic(serial, 'metrics')), 3000, 'live messages too')
  })

  t.test('an observer publish is refused and its connection closed; a device keeps no $SYS access', async (t) => {
    const client = await observer(t, ts, 'explorer', created.password)
    const closed = new Promise<void>(resolve => client.once('close', () => { resolve() }))
    client.publish(deviceTopic(serial, 'commands'), JSON.stringify({ id: 'x', command: 'reboot' }), { qos: 1 })
    await closed
    t.pass('closed by the server')
    t.ok(ts.logs.some(line => line.msg === 'observer publish refused; connection closed' && line.observer === 'explorer'))
    t.same(await subackOf(device.mqtt, { '$SYS/#': { qos: 0 } }), [128], 'devices cannot read $SYS')
  })

  t.test('wrong passwords, unknown names and a device serial as client id are refused; the device stays', async (t) => {
    t.equal(await refusedWith(ts, { username: 'explorer', password: 'wrong' }), 4)
    t.equal(await refusedWith(ts, { username: 'nobody', password: 'x' }), 4)
    t.equal(await refusedWith(ts, { username: 'explorer' }), 4, 'no password')
    t.equal(await refusedWith(ts, { username: 'explorer', password: created.password, clientId: serial }), 2, 'an observer may not take a device\'s session')
    t.ok(ts.logs.some(line => line.msg === 'observer connection refused' && line.reason === 'observer_client_id_is_a_device'))
    t.notOk(JSON.stringify(ts.logs).includes(created.password), 'the password is never logged')
    t.equal((await ts.api('GET', `/api/devices/${serial}`)).body.status, 'online', 'the device was not taken over')
    t.match(await ts.server.metrics(), /shepherd_device_connect_refusals_total\{reason="observer_bad_credentials"\} [3-9]/)
  })

  t.test('an empty client id asking for a session is refused with 2 (MQTT-3.1.3-8), before clean sessions are forced', async (t) => {
    const persistent = Buffer.from(connectPacket({ clientId: '', username: 'explorer', password: created.password }))
    persistent[9] = persistent[9]! & ~0x02 // the clean session flag off
    t.equal(await rawConnackCode(ts.mqttUrl, persistent), 2)
    t.equal(await rawConnackCode(ts.mqttUrl, connectPacket({ clientId: '', username: 'explorer', password: created.password })), 0, 'with a clean session it is fine')
  })

  t.test('observers get clean sessions: nothing is kept for a tool that went away', async (t) => {
    const first = await observer(t, ts, 'explorer', created.password, { clientId: 'forgetful-tool', clean: false })
    await first.subscribeAsync(deviceTopic(serial, 'metrics'), { qos: 1 })
    await first.endAsync()
    await device.publishMetrics([{ name: 'temp', value: 22 }])
    const second = await observer(t, ts, 'explorer', created.password, { clientId: 'forgetful-tool', clean: false })
    const messages: string[] = []
    second.on('message', topic => messages.push(topic))
    await new Promise(resolve => setTimeout(resolve, 300))
    t.same(messages, [], 'no queued messages')
  })

  t.test('a mosquitto_passwd user logs in; the file is read again when it changes; a removed user is disconnected', async (t) => {
    const fromFile = await observer(t, ts, 'grafana', 'from-the-file')
    t.ok(fromFile.connected)
    t.equal(await refusedWith(ts, { username: 'nodered', password: 'added-later' }), 4)
    await mosquittoPasswd(passwordFile, 'nodered', 'added-later', true)
    await eventually(async () => await refusedWith(ts, { username: 'nodered', password: 'added-later' }) === undefined, 5000, 'the new user accepted')
    const closed = new Promise<void>(resolve => fromFile.once('close', () => { resolve() }))
    execFileSync('mosquitto_passwd', ['-D', passwordFile, 'grafana'])
    await ts.server.reloadPasswordFile()
    t.equal(await refusedWith(ts, { username: 'grafana', password: 'from-the-file' }), 4, 'a removed user is refused')
    await closed
    t.pass('and its open session closed')
    t.ok(ts.logs.some(line => line.reason === 'observer_removed' && line.observer === 'grafana'))
  })

  t.test('an account decides for its name over a file user of the same name; removing it closes its sessions', async (t) => {
    await mosquittoPasswd(passwordFile, 'twice', 'file-password')
    await ts.server.reloadPasswordFile()
    const account = await ts.server.observers.add('twice')
    if (!account.ok) throw new Error('not created')
    t.equal(await refusedWith(ts, { username: 'twice', password: 'file-password' }), 4, 'the file password does not open the account')
    const session = await observer(t, ts, 'twice', account.password)
    const closed = new Promise<void>(resolve => session.once('close', () => { resolve() }))
    await ts.server.observers.remove('twice')
    await closed
    t.pass('the account\'s session closed once the account was removed')
    t.equal(await refusedWith(ts, { username: 'twice', password: account.password }), 4)
    t.equal(await refusedWith(ts, { username: 'twice', password: 'file-password' }), undefined, 'the file user of that name logs in again')
  })

  t.test('a password file that cannot be read any more has no users', async (t) => {
    await mosquittoPasswd(passwordFile, 'late', 'late-password')
    await ts.server.reloadPasswordFile()
    t.equal(await refusedWith(ts, { username: 'late', password: 'late-password' }), undefined)
    await rm(passwordFile)
    await ts.server.reloadPasswordFile()
    t.equal(await refusedWith(ts, { username: 'late', password: 'late-password' }), 4, 'refused once the file is gone')
    t.ok(ts.logs.some(line => line.msg === 'MQTT_PASSWORD_FILE cannot be read: none of its users can log in until it can'))
  })
})

t.test('observer logins beyond the password-check limit are refused with 3 (server unavailable) without a check', async (t) => {
  const ts = await startTestServer(t, { observerLoginLimit: { maxConcurrent: 1, maxWaiting: 0 } })
  const created = await ts.server.observers.add('crowd')
  if (!created.ok) throw new Error('observer not created')
  // sent together: the first one's scrypt check (tens of ms) is running when the others arrive
  const codes = await Promise.all(Array.from({ length: 6 }, async () => await refusedWith(ts, { username: 'crowd', password: created.password })))
  t.ok(codes.includes(undefined), `one logged in (${codes.join(', ')})`)
  t.ok(codes.includes(3), 'the ones beyond the limit were refused with 3')
  t.same(codes.filter(code => code !== undefined && code !== 3), [], 'no other refusal')
  t.ok(ts.logs.some(line => line.msg === 'observer connection refused' && line.reason === 'observer_logins_busy' && line.observer === 'crowd'))
  t.match(await ts.server.metrics(), /shepherd_device_connect_refusals_total\{reason="observer_logins_busy"\} [1-5]/)
  t.equal(await refusedWith(ts, { username: 'crowd', password: created.password }), undefined, 'once the crowd is gone a login goes through')
})
