// A firmware deleted between the update request's check and the insert of its updates (or of a
// group's rollout): a 404-shaped refusal (firmware_not_found), not a foreign key error (a 500).
import { randomUUID } from 'node:crypto'
import t from 'tap'
import { discardEvents } from '../../src/events/events.js'
import { createUpdates } from '../../src/firmware/updates.js'
import type { Firmware } from '../../src/firmware/types.js'
import { createLogger } from '../../src/logger.js'
import { openDatabase } from '../../src/storage/db.js'
import { migrateLatest } from '../../src/storage/migrate.js'
import { createUpdateRepository } from '../../src/storage/repos/firmware-repo.js'
import { createTestDatabase, DATABASES } from '../helpers/server.js'

for (const database of DATABASES) {
  t.test(`on ${database}`, async (t) => {
    const throwaway = database === 'postgres' ? await createTestDatabase() : undefined
    const db = await openDatabase({ databaseUrl: throwaway?.url, dataDir: '.', inMemory: true })
    t.teardown(async () => { await db.close(); await throwaway?.drop() })
    await migrateLatest(db.knex)
    await db.knex('groups').insert({ id: 1, name: 'g' })
    await db.knex('devices').insert({ serial: 'gone-1', group_id: 1 })
    // what the request's check read, deleted since
    const deleted: Firmware = { id: randomUUID(), version: '1.0.0', target: 'rpi4', application: null, sha256: 'a'.repeat(64), size: 1, storage_name: 'x.fw', created_at: new Date() }
    const device = { serial: 'gone-1', status: 'offline' as const, revoked: false, firmware_version: null, firmware_target: null }
    const updates = createUpdates({
      repo: createUpdateRepository(db.knex),
      firmware: { get: async () => deleted },
      findDevice: async () => device,
      groupMembers: async () => [device],
      commands: { issueEach: async () => { throw new Error('no command for an update that was not recorded') } },
      publish: async () => {},
      downloadUrl: () => 'http://localhost/x',
      events: discardEvents,
      logger: createLogger('silent'),
      stageTimeoutSeconds: 60
    })
    t.same(await updates.start('gone-1', { firmware_id: deleted.id }), { ok: false, reason: 'firmware_not_found' })
    t.same(await updates.startForGroup(1, { firmware_id: deleted.id }), { ok: false, reason: 'firmware_not_found' })
    t.equal(Number((await db.knex('updates').count({ n: '*' }))[0]!.n), 0, 'nothing recorded')
  })
}
