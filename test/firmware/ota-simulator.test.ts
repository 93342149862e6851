// The whole OTA loop without hardware: firmware uploaded over REST, updates started over REST on
// devices run by `shepherd simulate` (which download with Range, verify the sha256, report
// progress and reboot into the new version), complete on their own; and on reference devices:
// a hash mismatch reported as failed, a revert, and a device that ignores the offer timing out.
import { randomBytes } from 'node:crypto'
import path from 'node:path'
import t from 'tap'
import { connectDevice } from '../../src/device-client/device-client.js'
import { writeFleetCa } from '../../src/certs/pki.js'
import { createTestPki, uniqueSerial } from '../helpers/pki.js'
import { runShepherd } from '../helpers/cli.js'
import { eventually, startTestServer } from '../helpers/server.js'
import { upload } from './store.test.js'

t.test('shepherd simulate devices update end to end over REST', async (t) => {
  const pki = await createTestPki()
  const ts = await startTestServer(t, { pki })
  const caDir = path.join(ts.dataDir, 'ca')
  await writeFleetCa(caDir, { ...pki.ca, keyPem: pki.caKeyPem })
  const image = randomBytes(300_000)
  const firmware = (await upload(ts, 'version=1.1.0&target=sim', image)).body
  const running = runShepherd(['simulate', '--devices', '3', '--url', ts.wsUrl, '--ca-dir', caDir, '--duration', '12', '--prefix', 'otasim'])
  await eventually(async () => (await ts.api('GET', '/api/devices?status=online&q=otasim')).body.items.length === 3, 10_000, 'three simulated devices online')

  const group = (await ts.api('POST', '/api/groups', { body: { name: 'otasim' } })).body
  await ts.api('POST', `/api/groups/${group.id}/devices`, { body: { serials: ['otasim-1', 'otasim-2', 'otasim-3'] } })
  const rollout = await ts.api('POST', `/api/groups/${group.id}/update`, { body: { firmware_id: firmware.id } })
  t.equal(rollout.status, 202)
  t.equal(rollout.body.total, 3)
  const counts = await eventually(async () => {
    const r = await ts.api('GET', `/api/groups/${group.id}/updates/${rollout.body.rollout_id}`)
    return r.body.states.complete === 3 && r.body
  }, 15_000, 'all three complete')
  t.match(counts.states, { complete: 3, failed: 0, pending: 0 })
  for (const serial of ['otasim-1', 'otasim-2', 'otasim-3']) {
    const device = (await ts.api('GET', `/api/devices/${serial}`)).body
    t.equal(device.firmware_version, '1.1.0', `${serial} rebooted into 1.1.0`)
    const [update] = (await ts.api('GET', `/api/devices/${serial}/updates`)).body.items
    t.match(update, { state: 'complete', progress: 100, previous_version: '1.0.0', downloading_at: /Z$/, applying_at: /Z$/, completed_at: /Z$/ })
  }
  const result = await running
  t.equal(result.code, 0, result.stderr)
})

t.test('reference devices: hash mismatch, revert, and an ignored offer timing out', async (t) => {
  const ts = await startTestServer(t)
  const firmware = (await upload(ts, 'version=5.0.0&target=rpi4', randomBytes(50_000))).body
  const info = { firmware_version: '4.0.0', firmware_target: 'rpi4' }
  const start = async (serial: string) => (await ts.api('POST', `/api/devices/${serial}/update`, { body: { firmware_id: firmware.id } })).body.id as string
  const finalState = (id: string) => eventually(async () => {
    const update = (await ts.api('GET', `/api/updates/${id}`)).body
    return ['complete', 'failed'].includes(update.state) && update
  }, 10_000, `update ${id} finished`)

  // the stored file no longer matches its record (bit rot, a tampered store): the device refuses it
  const corrupt = uniqueSerial('corrupt')
  const corruptDevice = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(corrupt), info, rebootDelayMs: 100 })
  t.teardown(() => corruptDevice.close())
  const reverting = uniqueSerial('revert')
  const revertDevice = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(reverting), info, rebootDelayMs: 100, updateBehaviour: 'revert' })
  t.teardown(() => revertDevice.close())
  const silent = uniqueSerial('silent')
  const silentDevice = await connectDevice({ url: ts.wsUrl, identity: await ts.pki.device(silent), info, updateBehaviour: 'ignore' })
  t.teardown(() => silentDevice.close())
  await eventually(async () => (await ts.server.db.knex('devices').whereIn('serial', [corrupt, reverting, silent]).where({ firmware_target: 'rpi4' })).length === 3, 5000, 'info recorded')

  const wrongHash = 'f'.repeat(64)
  await ts.server.db.knex('firmware').where({ id: firmware.id }).update({ sha256: wrongHash })
  const corruptUpdate = await start(corrupt)
  t.match(await finalState(corruptUpdate), { state: 'failed', failure_reason: 'device', error: /sha256 mismatch/ })
  await ts.server.db.knex('firmware').where({ id: firmware.id }).update({ sha256: firmware.sha256 })

  const revertUpdate = await start(reverting)
  t.match(await finalState(revertUpdate), { state: 'failed', failure_reason: 'reverted', applying_at: /Z$/ })

  const silentUpdate = await start(silent)
  await new Promise(resolve => setTimeout(resolve, 500))
  t.equal((await ts.api('GET', `/api/updates/${silentUpdate}`)).body.state, 'pending', 'the device ignores it')
  await ts.server.db.knex('updates').where({ id: silentUpdate }).update({ expires_at: new Date(Date.now() - 1000) })
  t.match(await finalState(silentUpdate), { state: 'failed', failure_reason: 'timeout' })
})
