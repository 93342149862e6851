// `shepherd observer add|list|remove` as its own process: through the running server's control
// socket on PGlite, on the database itself with PostgreSQL. The password printed once logs in.
import { mkdtemp, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import mqtt from 'mqtt'
import t from 'tap'
import { runShepherd } from '../helpers/cli.js'
import { DATABASES, startTestServer } from '../helpers/server.js'

for (const database of DATABASES) {
  t.test(`shepherd observer on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })
    const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-observer-cli-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const env = ts.databaseUrl === undefined ? { DATA_DIR: ts.dataDir } : { DATABASE_URL: ts.databaseUrl, DATA_DIR: dir }

    t.match((await runShepherd(['observer', 'list'], { env })).stdout, /no observers/)
    const added = await runShepherd(['observer', 'add', 'grafana'], { env })
    t.equal(added.code, 0, added.stderr)
    t.match(added.stdout, /observer "grafana" created: MQTT username grafana, read-only/)
    const password = added.stdout.trim().split('\n').at(-1)!
    const client = await mqtt.connectAsync(ts.mqttUrl, { username: 'grafana', password, protocolVersion: 4, reconnectPeriod: 0 })
    t.ok(client.connected, 'the printed password logs in')
    await client.endAsync()

    const again = await runShepherd(['observer', 'add', 'grafana'], { env })
    t.equal(again.code, 1)
    t.match(again.stderr, /already exists/)
    t.equal((await runShepherd(['observer', 'add', '-bad name'], { env })).code, 2)
    t.equal((await runShepherd(['observer', 'frobnicate'], { env })).code, 2)
    t.match((await runShepherd(['observer', 'list'], { env })).stdout, /^NAME\s+CREATED\ngrafana\s+\d{4}-\d\d-\d\dT/m)
    t.equal((await runShepherd(['observer', 'remove', 'grafana'], { env })).code, 0)
    t.equal((await runShepherd(['observer', 'remove', 'grafana'], { env })).code, 1, 'an unknown name exits 1')
    const refused = await mqtt.connectAsync(ts.mqttUrl, { username: 'grafana', password, protocolVersion: 4, reconnectPeriod: 0 }).then(c => { c.end(true); return undefined }, (error: Error & { code?: number }) => error.code)
    t.equal(refused, 4, 'a removed observer is refused')
  })
}
