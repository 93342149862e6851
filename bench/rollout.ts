// Group rollout benchmark (prints figures; not a test):
//   node --import tsx bench/rollout.ts [--members N] [--runs R]
// Workload: a group of N offline devices (default 10,000) on a fresh PostgreSQL database; the time
// of POST /api/groups/:id/update (every member gets its update row, retained offer and queued
// update command) against, in the same run on the same group, the time of
// POST /api/groups/:id/commands with `identify` (the command fan-out: one batch insert) as the
// baseline. Each is run R times (default 3) on a new group; the server runs in this process with
// its HTTP API reached through Fastify's inject (no sockets), MQTT off.
import { randomBytes } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { parseArgs } from 'node:util'
import { createFleetCa, writeFleetCa } from '../src/certs/pki.js'
import { loadConfig } from '../src/config.js'
import { createLogger } from '../src/logger.js'
import { createServer } from '../src/server.js'
import { createThrowawayDatabase, loadAverage, machineDescription } from './lib/environment.js'
import { percentile } from './lib/figures.js'
import { guardRun } from './lib/run-guard.js'
import { optionChecks, type OptionChecks } from './lib/options.js'

const checks: OptionChecks = optionChecks('node --import tsx bench/rollout.ts [--members 1..100000] [--runs 1..20] [--timeout SECONDS]')
const { values } = parseArgs({ options: { members: { type: 'string', default: '10000' }, runs: { type: 'string', default: '3' }, timeout: { type: 'string', default: '600' } } })
const members = checks.integer('members', values.members, 100_000)
const runs = checks.integer('runs', values.runs, 20)
const timeoutSeconds = checks.integer('timeout', values.timeout, 86_400)

const results: Array<{ kind: string, ms: number }> = []
const report = (): void => {
  for (const kind of ['rollout', 'command fan-out']) {
    const times = results.filter(r => r.kind === kind).map(r => r.ms).sort((a, b) => a - b)
    if (times.length === 0) continue
    console.log(`${kind.padEnd(16)} ${members} members: median ${percentile(times, 50).toFixed(0)} ms (${times.map(ms => ms.toFixed(0)).join(', ')}), ${(percentile(times, 50) * 1000 / members).toFixed(0)} µs per member`)
  }
}
let cleanUp = async (): Promise<void> => {}
const guard = guardRun({ timeoutSeconds, reportPartial: () => { report(); return results.length > 0 }, cleanUp: () => cleanUp() })

console.log('Shepherd group rollout benchmark')
console.log(`workload: ${runs} × a group of ${members} offline devices on PostgreSQL: POST /api/groups/:id/update vs POST /api/groups/:id/commands (identify) on the same group`)
console.log(`machine: ${machineDescription()}; load average at the start: ${loadAverage()}`)

guard.phase = 'creating the PostgreSQL database'
const database = await createThrowawayDatabase()
const dataDir = await mkdtemp(path.join(os.tmpdir(), 'shepherd-bench-rollout-'))
cleanUp = async () => { await database.drop(); await rm(dataDir, { recursive: true, force: true }) }
await guard.run(async () => {
  guard.phase = 'starting the server'
  const caDir = path.join(dataDir, 'ca')
  await writeFleetCa(caDir, await createFleetCa())
  const server = await createServer(loadConfig({ DATABASE_URL: database.url, DATA_DIR: dataDir, FLEET_CA_PATH: path.join(caDir, 'fleet_ca.pem'), MQTT_PORT: '0', LOG_LEVEL: 'warn' }), { logger: createLogger('warn') })
  const created = await server.tokens.create('bench')
  if (!created.ok) throw new Error('no token')
  const api = async (method: 'POST', url: string, body: unknown, headers: Record<string, string> = {}) => {
    const response = await server.http.inject({ method, url, headers: { authorization: `Bearer ${created.token}`, ...headers }, payload: body as string })
    if (response.statusCode >= 300) throw new Error(`${method} ${url}: ${response.statusCode} ${response.body}`)
    return JSON.parse(response.body) as Record<string, unknown>
  }
  const firmware = await api('POST', '/api/firmware?version=2.0.0&target=bench', randomBytes(4096), { 'content-type': 'application/octet-stream' })
  for (let run = 1; run <= runs; run++) {
    guard.phase = `run ${run}: making a group of ${members} devices`
    const group = await api('POST', '/api/groups', { name: `bench-${run}` })
    const rows = Array.from({ length: members }, (_, i) => ({ serial: `bench-${run}-${i}`, firmware_target: 'bench', group_id: group.id }))
    for (let i = 0; i < rows.length; i += 1000) await server.db.knex('devices').insert(rows.slice(i, i + 1000))
    for (const [kind, url, body] of [['command fan-out', `/api/groups/${group.id}/commands`, { command: 'identify' }], ['rollout', `/api/groups/${group.id}/update`, { firmware_id: firmware.id }]] as const) {
      guard.phase = `run ${run}: ${kind}`
      const started = performance.now()
      const answer = await api('POST', url, body)
      results.push({ kind, ms: performance.now() - started })
      if (answer.total !== members) throw new Error(`${kind}: ${String(answer.total)} of ${members}`)
    }
  }
  guard.phase = 'closing'
  await server.close()
  report()
})
