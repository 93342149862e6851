// `shepherd token create|list|revoke` as its own process: on PostgreSQL straight to the database,
// on the embedded database through the running server's control socket, or directly to the
// database when no server runs. The printed token works against the REST API until revoked.
import t from 'tap'
import type { Test } from 'tap'
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { runShepherd, type CliResult } from '../helpers/cli.js'
import { DATABASES, startTestServer, type TestServer } from '../helpers/server.js'

async function emptyDataDir (t: Test): Promise<string> {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-cli-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  return dir
}

const lastLine = (result: CliResult): string => result.stdout.trimEnd().split('\n').at(-1) ?? ''

let names = 0
const uniqueName = (prefix: string): string => `${prefix}-${process.pid}-${++names}`

async function devicesWith (ts: TestServer, token: string): Promise<number> {
  return (await fetch(`${ts.httpUrl}/api/devices`, { headers: { authorization: `Bearer ${token}` } })).status
}

for (const database of DATABASES) {
  t.test(`shepherd token against a running server on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })
    // how the CLI reaches this server: DATABASE_URL on PostgreSQL, DATA_DIR (control socket) on PGlite
    const env = ts.databaseUrl !== undefined ? { DATABASE_URL: ts.databaseUrl, DATA_DIR: await emptyDataDir(t) } : { DATA_DIR: ts.dataDir }
    const shepherd = (...args: string[]): Promise<CliResult> => runShepherd(args, { env })

    t.test('create, use, list, revoke', async (t) => {
      const name = uniqueName('ci')
      const created = await shepherd('token', 'create', '--name', name)
      t.equal(created.code, 0, `exit 0 (stderr: ${created.stderr.trim()})`)
      const lines = created.stdout.trimEnd().split('\n')
      const token = lines.at(-1)!
      t.match(token, /^shp_[A-Za-z0-9_-]{43}$/, 'the token alone on the last line')
      t.match(lines.at(-2), /not be shown again/, 'the line before says it will not be shown again')
      t.equal(await devicesWith(ts, token), 200, 'the token works against the REST API')

      const listed = await shepherd('token', 'list')
      t.equal(listed.code, 0)
      t.match(listed.stdout, /NAME\s+CREATED\s+LAST USED/, 'a header')
      t.match(listed.stdout, new RegExp(`^${name}\\s+\\d{4}-\\d\\d-\\d\\dT\\S+Z\\s+\\d{4}-\\d\\d-\\d\\dT\\S+Z$`, 'm'), 'the name, when it was created and last used')
      t.match(listed.stdout, /^test-\S+\s/m, 'the other tokens too')
      t.notMatch(listed.stdout, token, 'not the token')
      t.notMatch(listed.stdout, createHash('sha256').update(token).digest('hex'), 'not its hash')

      const duplicate = await shepherd('token', 'create', '--name', name)
      t.equal(duplicate.code, 1, 'a duplicate name: exit 1')
      t.match(duplicate.stderr, `already exists`, 'says why')
      t.notMatch(duplicate.stderr, 'Usage:', 'without the usage text')
      t.equal(duplicate.stdout, '', 'prints no token')
      t.equal(await devicesWith(ts, token), 200, 'the first token still works')

      const revoked = await shepherd('token', 'revoke', name)
      t.equal(revoked.code, 0, `revoke: exit 0 (stderr: ${revoked.stderr.trim()})`)
      t.match(revoked.stdout, 'revoked')
      t.equal(await devicesWith(ts, token), 401, 'the revoked token gets 401')
      t.notMatch((await shepherd('token', 'list')).stdout, name, 'no longer listed')

      const again = await shepherd('token', 'revoke', name)
      t.equal(again.code, 1, 'an unknown name: exit 1')
      t.match(again.stderr, `no API token named "${name}"`)

      t.notMatch(JSON.stringify(ts.logs), token, 'the server never logged the token')
    })
  })
}

t.test('on the embedded database with no server running, the CLI opens the database itself', async (t) => {
  const env = { DATA_DIR: await emptyDataDir(t) }
  const created = await runShepherd(['token', 'create', '--name', 'offline'], { env })
  t.equal(created.code, 0, `exit 0 (stderr: ${created.stderr.trim()})`)
  t.match(lastLine(created), /^shp_/)
  const listed = await runShepherd(['token', 'list'], { env })
  t.match(listed.stdout, /^offline\s+\S+\s+never$/m, 'listed, never used')
  const revoked = await runShepherd(['token', 'revoke', 'offline'], { env })
  t.equal(revoked.code, 0, `revoke: exit 0 (stderr: ${revoked.stderr.trim()})`)
})

t.test('bad usage exits 2 with the usage text', async (t) => {
  const dataDir = await emptyDataDir(t)
  const cases: Array<{ args: string[], what: string, says: RegExp }> = [
    { args: ['token'], what: 'no subcommand', says: /expected create, list or revoke/ },
    { args: ['token', 'rename'], what: 'an unknown subcommand', says: /unknown token command "rename"/ },
    { args: ['token', 'create'], what: 'no --name', says: /--name is required/ },
    { args: ['token', 'create', '--name', 'has space'], what: 'a name with a space', says: /not a valid token name/ },
    { args: ['token', 'create', '--name', 'x'.repeat(65)], what: 'a 65-character name', says: /not a valid token name/ },
    { args: ['token', 'create', '--name=-dash'], what: 'a name starting with a dash', says: /not a valid token name/ },
    { args: ['token', 'revoke'], what: 'revoke without a name', says: /expected 1 argument/ },
    { args: ['token', 'revoke', 'a/b'], what: 'revoke with a bad name', says: /not a valid token name/ },
    { args: ['token', 'list', 'extra'], what: 'list with an argument', says: /unexpected argument/ }
  ]
  const results = await Promise.all(cases.map(async c => await runShepherd(c.args, { env: { DATA_DIR: dataDir } })))
  cases.forEach((c, i) => {
    const result = results[i]!
    t.equal(result.code, 2, `${c.what}: exit status 2`)
    t.match(result.stderr, c.says, `${c.what}: says what is wrong`)
    t.match(result.stderr, /token create --name N/, `${c.what}: prints the usage text`)
    t.equal(result.stdout, '', `${c.what}: nothing on stdout`)
  })
})
