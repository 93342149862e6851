// The embedded database admits one process: a CLI command run while a server starts on the same
// DATA_DIR must reach that server (or hold the directory until it is done), never open the
// database files alongside it.
import t from 'tap'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { createTestPki } from '../helpers/pki.js'
import { runShepherd, spawnShepherdServer } from '../helpers/cli.js'

t.test('token create while the server is starting: the token works against that server', async (t) => {
  const dataDir = await mkdtemp(path.join(tmpdir(), 'shepherd-datadir-'))
  t.teardown(() => rm(dataDir, { recursive: true, force: true }))
  const caPath = path.join(dataDir, 'fleet_ca.pem')
  await writeFile(caPath, (await createTestPki()).caPem)
  const env = { DATA_DIR: dataDir, FLEET_CA_PATH: caPath }

  // both at once: whichever claims DATA_DIR first, the other waits for it or asks it
  const [server, created] = await Promise.all([spawnShepherdServer(t, env), runShepherd(['token', 'create', '--name', 'early'], { env })])
  t.equal(created.code, 0, created.stderr)
  const token = created.stdout.trim().split('\n').at(-1)!
  const response = await fetch(`http://127.0.0.1:${server.httpPort}/api/devices`, { headers: { authorization: `Bearer ${token}` } })
  t.equal(response.status, 200, 'the server knows the token made while it started')

  const migrated = await runShepherd(['migrate'], { env })
  t.equal(migrated.code, 0, migrated.stderr)
  t.match(migrated.stdout, 'database is up to date', 'migrate asks the running server instead of opening its database')
  server.child.kill('SIGTERM')
})

t.test('a CLI command on a DATA_DIR that does not exist yet makes it', async (t) => {
  const parent = await mkdtemp(path.join(tmpdir(), 'shepherd-datadir-'))
  t.teardown(() => rm(parent, { recursive: true, force: true }))
  const migrated = await runShepherd(['migrate'], { env: { DATA_DIR: path.join(parent, 'new', 'data') } })
  t.equal(migrated.code, 0, migrated.stderr)
  t.notMatch(migrated.stderr, /EACCES|Error:/)
})
