import t from 'tap'
import { mkdtemp } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { runShepherd } from '../helpers/cli.js'
import { createTestDatabase } from '../helpers/server.js'
import { migrations } from '../../migrations/index.js'

t.test('shepherd migrate applies pending migrations once, on PostgreSQL and on PGlite', async (t) => {
  const database = await createTestDatabase()
  t.teardown(() => database.drop())
  const dataDir = await mkdtemp(path.join(tmpdir(), 'shepherd-migrate-'))
  for (const env of [{ DATABASE_URL: database.url }, { DATA_DIR: dataDir }]) {
    const first = await runShepherd(['migrate'], { env })
    t.equal(first.code, 0, first.stderr)
    t.match(first.stdout, `applied ${migrations.length} migration(s)`)
    const again = await runShepherd(['migrate'], { env })
    t.equal(again.code, 0)
    t.match(again.stdout, /database is up to date/)
  }
  const client = new pg.Client({ connectionString: database.url })
  await client.connect()
  const { rows } = await client.query("SELECT column_name FROM information_schema.columns WHERE table_name = 'devices' ORDER BY column_name")
  await client.end()
  const columns = rows.map((row: { column_name: string }) => row.column_name)
  for (const column of ['serial', 'nickname', 'status', 'firmware_version', 'firmware_target', 'metadata', 'cert_fingerprint', 'cert_not_after', 'revoked', 'last_seen_at', 'group_id', 'disconnect_reason', 'connected_at', 'node_id']) {
    t.ok(columns.includes(column), `devices.${column}`)
  }
  const bad = await runShepherd(['migrate'], { env: { DATABASE_URL: 'mysql://nope' } })
  t.equal(bad.code, 1)
  t.match(bad.stderr, /DATABASE_URL must be a postgres: or postgresql: URL/)
})
