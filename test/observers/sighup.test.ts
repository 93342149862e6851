// `shepherd start` as its own process: SIGHUP reads MQTT_PASSWORD_FILE again (as Mosquitto does)
// and does not stop the server; SIGTERM still does.
import { execFileSync } from 'node:child_process'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { spawnShepherdServer } from '../helpers/cli.js'
import { createTestPki } from '../helpers/pki.js'
import { eventually } from '../helpers/server.js'

t.test('SIGHUP reads the password file again and keeps serving', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-sighup-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const caPath = path.join(dir, 'fleet_ca.pem')
  await writeFile(caPath, (await createTestPki()).caPem)
  const passwordFile = path.join(dir, 'passwd')
  execFileSync('mosquitto_passwd', ['-c', '-b', passwordFile, 'first', 'secret'])
  const server = await spawnShepherdServer(t, { DATA_DIR: path.join(dir, 'data'), FLEET_CA_PATH: caPath, MQTT_PASSWORD_FILE: passwordFile })
  const lines: Array<{ msg?: string, users?: number }> = []
  server.child.stdout!.on('data', (chunk: Buffer) => {
    for (const line of chunk.toString().split('\n')) if (line.startsWith('{')) lines.push(JSON.parse(line))
  })
  server.child.kill('SIGHUP')
  const reread = await eventually(() => lines.find(line => line.msg === 'observer password file read again'), 5000, 'the file read again')
  t.equal(reread.users, 1)
  t.equal(server.child.exitCode, null, 'still running')
  t.equal((await fetch(`http://127.0.0.1:${server.httpPort}/api/health`)).status, 200, 'and serving')
  const exited = new Promise<number | null>(resolve => server.child.once('exit', resolve))
  server.child.kill('SIGTERM')
  t.equal(await exited, 0, 'SIGTERM shuts down cleanly')
})
