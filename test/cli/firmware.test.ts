// `shepherd firmware upload` as its own process against a running server: the file lands in the
// server's FIRMWARE_DIR with a progress bar on stderr, is recorded (over the control socket on
// PGlite, on the database on PostgreSQL), and serves downloads; bad versions and duplicates fail.
import { createHash, randomBytes } from 'node:crypto'
import { mkdtemp, readdir, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { runShepherd } from '../helpers/cli.js'
import { DATABASES, startTestServer } from '../helpers/server.js'

for (const database of DATABASES) {
  t.test(`shepherd firmware upload on ${database}`, async (t) => {
    const ts = await startTestServer(t, { database })
    const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-fw-cli-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const firmwareDir = path.join(ts.dataDir, 'firmware')
    const env = ts.databaseUrl === undefined
      ? { DATA_DIR: ts.dataDir }
      : { DATABASE_URL: ts.databaseUrl, DATA_DIR: dir, FIRMWARE_DIR: firmwareDir }
    const image = randomBytes(3 * 1024 * 1024)
    const file = path.join(dir, 'rootfs.fw')
    await writeFile(file, image)

    const uploaded = await runShepherd(['firmware', 'upload', file, '--version', '3.1.0', '--target', 'rpi4', '--application', 'main'], { env })
    t.equal(uploaded.code, 0, uploaded.stderr)
    const sha256 = createHash('sha256').update(image).digest('hex')
    t.match(uploaded.stdout, new RegExp(`firmware [0-9a-f-]{36}: rpi4 \\(main\\) 3\\.1\\.0, ${image.length} bytes, sha256 ${sha256}`))
    t.match(uploaded.stderr, /uploading \[#{30}\] 100% 3\.0\/3\.0 MiB/, 'a progress bar')
    t.match(uploaded.stderr, /uploading \[\.{30}\] 0%/, 'from 0%')
    const listed = (await ts.api('GET', '/api/firmware?target=rpi4')).body.items
    t.match(listed, [{ version: '3.1.0', application: 'main', sha256, size: image.length }], 'the server lists it')
    t.ok((await readdir(firmwareDir)).includes(`${sha256}.fw`), 'in the server\'s FIRMWARE_DIR')

    const again = await runShepherd(['firmware', 'upload', file, '--version', '3.2.0', '--target', 'rpi4'], { env })
    t.equal(again.code, 1)
    t.match(again.stderr, /already stored as firmware/)
    t.same(await readdir(path.join(firmwareDir, '.incoming')), [], 'the refused copy was removed')
    const badVersion = await runShepherd(['firmware', 'upload', file, '--version', 'v3', '--target', 'rpi4'], { env })
    t.equal(badVersion.code, 2)
    t.match(badVersion.stderr, /--version must be a SemVer version/)
    t.equal((await runShepherd(['firmware', 'upload', path.join(dir, 'missing.fw'), '--version', '1.0.0', '--target', 'rpi4'], { env })).code, 1)
    t.equal((await runShepherd(['firmware', 'download', file], { env })).code, 2)
  })
}
