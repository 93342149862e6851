// `shepherd firmware upload` as its own process against a running server: the file lands in the
// server's FIRMWARE_DIR with a progress bar on stderr, is recorded (over the control socket on
// PGlite, on the database on PostgreSQL), and serves downloads; bad versions and duplicates fail.
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { mkdtemp, readdir, rm, truncate, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import t from 'tap'
import { runShepherd, SHEPHERD_BIN } from '../helpers/cli.js'
import { DATABASES, eventually, startTestServer } from '../helpers/server.js'

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
    await writeFile(path.join(dir, 'other.fw'), randomBytes(1024))
    const taken = await runShepherd(['firmware', 'upload', path.join(dir, 'other.fw'), '--version', '3.1.0', '--target', 'rpi4', '--application', 'main'], { env })
    t.equal(taken.code, 1)
    t.match(taken.stderr, /firmware 3\.1\.0 for rpi4 \(main\) already exists/)
    t.notMatch(taken.stderr, /uploading/, 'refused before any byte was copied')
    const badVersion = await runShepherd(['firmware', 'upload', file, '--version', 'v3', '--target', 'rpi4'], { env })
    t.equal(badVersion.code, 2)
    t.match(badVersion.stderr, /--version must be a SemVer version/)
    t.equal((await runShepherd(['firmware', 'upload', path.join(dir, 'missing.fw'), '--version', '1.0.0', '--target', 'rpi4'], { env })).code, 1)
    await writeFile(path.join(dir, 'empty.fw'), '')
    const empty = await runShepherd(['firmware', 'upload', path.join(dir, 'empty.fw'), '--version', '1.0.0', '--target', 'rpi4'], { env })
    t.equal(empty.code, 1)
    t.match(empty.stderr, /empty\.fw is empty/)
    t.equal((await runShepherd(['firmware', 'download', file], { env })).code, 2)
  })
}

t.test('Ctrl-C during shepherd firmware upload leaves nothing staged', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-fw-int-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const file = path.join(dir, 'big.fw')
  await writeFile(file, Buffer.alloc(0))
  await truncate(file, 4 * 1024 * 1024 * 1024) // sparse: read at disk speed, never finished before the signal
  const child = spawn(process.execPath, [SHEPHERD_BIN, 'firmware', 'upload', file, '--version', '1.0.0', '--target', 'rpi4'], {
    env: { PATH: process.env.PATH, HOME: process.env.HOME, DATA_DIR: path.join(dir, 'data'), FIRMWARE_MAX_SIZE: String(8 * 1024 ** 3) }, stdio: ['ignore', 'pipe', 'pipe']
  })
  let stderr = ''
  child.stderr.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  await eventually(async () => (await readdir(path.join(dir, 'data', 'firmware', '.incoming')).catch(() => [])).length > 0, 10_000, 'the upload is being staged')
  child.kill('SIGINT')
  const [code] = await once(child, 'exit') as [number]
  t.equal(code, 1, stderr)
  t.match(stderr, /upload interrupted; nothing was kept/)
  t.same(await readdir(path.join(dir, 'data', 'firmware', '.incoming')), [], 'the staged part was removed')
})
