// The firmware store over real HTTP: uploads streamed to FIRMWARE_DIR with sha256 and size,
// duplicates and bad versions refused, the size limit, list/get/delete; signed download URLs
// (tampered, expired, for another firmware) and Range requests resumed halfway.
import { createHash, randomBytes } from 'node:crypto'
import { readdir, rename } from 'node:fs/promises'
import path from 'node:path'
import t from 'tap'
import { createDownloadUrls } from '../../src/firmware/download-urls.js'
import { SECRET_KEY_FILE } from '../../src/storage/secret-key.js'
import { startTestServer, type TestServer } from '../helpers/server.js'
import { readFile } from 'node:fs/promises'

const sha256 = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex')

export async function upload (ts: TestServer, query: string, body: Buffer, token: string | null = ts.apiToken): Promise<{ status: number, body: any, headers: Headers }> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const response = await fetch(`${ts.httpUrl}/api/firmware?${query}`, {
    method: 'POST',
    headers: { ...(token === null ? {} : { authorization: `Bearer ${token}` }), 'content-type': 'application/octet-stream' },
    body
  })
  return { status: response.status, body: await response.json(), headers: response.headers }
}

/** The download URL the server would put in an offer (same secret, same path). */
async function signedPath (ts: TestServer, firmwareId: string, ttlSeconds = 3600): Promise<string> {
  const secret = (await readFile(path.join(ts.dataDir, SECRET_KEY_FILE), 'utf8')).trim()
  return createDownloadUrls({ secret, ttlSeconds }).path(firmwareId)
}

t.test('firmware store', async (t) => {
  const ts = await startTestServer(t, { env: { FIRMWARE_MAX_SIZE: String(2 * 1024 * 1024) } })
  const image = randomBytes(1024 * 1024 + 123)

  t.test('upload computes sha256 and size and keeps the file under FIRMWARE_DIR', async (t) => {
    const created = await upload(ts, 'version=1.2.0&target=rpi4&application=main', image)
    t.equal(created.status, 201)
    t.match(created.body, { id: /^[0-9a-f-]{36}$/, version: '1.2.0', target: 'rpi4', application: 'main', sha256: sha256(image), size: image.length, created_at: /Z$/ })
    const files = await readdir(path.join(ts.dataDir, 'firmware'))
    t.ok(files.includes(`${sha256(image)}.fw`), 'stored by its hash')
    t.same(await readdir(path.join(ts.dataDir, 'firmware', '.incoming')), [], 'nothing left in staging')
    t.match((await ts.api('GET', `/api/firmware/${created.body.id}`)).body, { id: created.body.id, sha256: sha256(image) })
  })

  t.test('duplicates and bad input are refused, nothing is kept', async (t) => {
    const again = await upload(ts, 'version=1.3.0&target=rpi4', image)
    t.equal(again.status, 409, 'the same bytes under another version')
    t.match(again.body, { error: 'conflict', message: /already stored/ })
    const sameVersion = await upload(ts, 'version=1.2.0&target=rpi4&application=main', randomBytes(100))
    t.equal(sameVersion.status, 409, 'the same target+application+version')
    t.match(sameVersion.body.message, /already exists/)
    t.equal((await upload(ts, 'version=1.2.0&target=rpi4', randomBytes(100))).status, 201, 'the same version without application is another firmware')
    for (const [query, field] of [['version=1.2&target=rpi4', 'version'], ['version=latest&target=rpi4', 'version'], ['version=v1.2.0&target=rpi4', 'version'], ['version=%201.2.0&target=rpi4', 'version'], ['version=1.0.0&target=rp%20i4', 'target'], ['target=rpi4', 'version'], ['version=1.0.0', 'target']]) {
      const refused = await upload(ts, query!, randomBytes(10))
      t.equal(refused.status, 400, query!)
      t.equal(refused.body.field, field, `${query} names ${field}`)
    }
    const empty = await upload(ts, 'version=9.0.0&target=rpi4', Buffer.alloc(0))
    t.equal(empty.status, 400)
    t.match(empty.body, { field: 'body', message: /empty/ })
    const tooBig = await upload(ts, 'version=9.0.0&target=rpi4', randomBytes(2 * 1024 * 1024 + 1))
    t.equal(tooBig.status, 413)
    t.match(tooBig.body, { error: 'payload_too_large', message: /FIRMWARE_MAX_SIZE/ })
    t.equal(tooBig.headers.get('connection'), 'close', 'refused from its Content-Length: the connection is closed rather than the body read')
    t.equal((await upload(ts, 'version=9.0.1&target=rpi4', randomBytes(10), null)).status, 401, 'a token is needed')
    const files = await readdir(path.join(ts.dataDir, 'firmware'))
    t.equal(files.filter(name => name.endsWith('.fw')).length, 2, 'only the two stored firmware files')
    t.same(await readdir(path.join(ts.dataDir, 'firmware', '.incoming')), [], 'refused uploads leave nothing behind')
  })

  t.test('list pages newest first and filters by target; delete removes record and file', async (t) => {
    const other = await upload(ts, 'version=0.1.0&target=bbb', randomBytes(50))
    const page = await ts.api('GET', '/api/firmware?limit=2')
    t.equal(page.body.items.length, 2)
    t.equal(page.body.items[0].id, other.body.id, 'newest first')
    const rest = await ts.api('GET', `/api/firmware?limit=2&cursor=${page.body.next_cursor}`)
    t.equal(rest.body.items.length, 1)
    t.equal(rest.body.next_cursor, null)
    t.same((await ts.api('GET', '/api/firmware?target=bbb')).body.items.map((f: { id: string }) => f.id), [other.body.id])
    t.equal((await ts.api('DELETE', `/api/firmware/${other.body.id}`)).status, 204)
    t.equal((await ts.api('GET', `/api/firmware/${other.body.id}`)).status, 404)
    t.equal((await ts.api('DELETE', `/api/firmware/${other.body.id}`)).status, 404)
    t.notOk((await readdir(path.join(ts.dataDir, 'firmware'))).includes(`${other.body.sha256}.fw`), 'the file is gone')
  })

  t.test('signed downloads: whole file, Range resumed halfway, tampered and expired URLs', async (t) => {
    const firmware = (await ts.api('GET', '/api/firmware?target=rpi4')).body.items.find((f: { size: number }) => f.size === image.length)
    const url = `${ts.httpUrl}${await signedPath(ts, firmware.id)}`

    const whole = await fetch(url)
    t.equal(whole.status, 200, 'no token needed')
    t.equal(whole.headers.get('accept-ranges'), 'bytes')
    t.equal(whole.headers.get('content-length'), String(image.length))
    t.equal(whole.headers.get('etag'), `"${sha256(image)}"`)
    t.equal(sha256(Buffer.from(await whole.arrayBuffer())), sha256(image))

    const half = Math.floor(image.length / 2)
    const first = await fetch(url, { headers: { range: `bytes=0-${half - 1}` } })
    t.equal(first.status, 206)
    t.equal(first.headers.get('content-range'), `bytes 0-${half - 1}/${image.length}`)
    const second = await fetch(url, { headers: { range: `bytes=${half}-`, 'if-range': `"${sha256(image)}"` } })
    t.equal(second.status, 206)
    t.equal(second.headers.get('content-length'), String(image.length - half))
    const joined = Buffer.concat([Buffer.from(await first.arrayBuffer()), Buffer.from(await second.arrayBuffer())])
    t.equal(sha256(joined), sha256(image), 'the resumed download matches the sha256')

    const stale = await fetch(url, { headers: { range: `bytes=${half}-`, 'if-range': '"other"' } })
    t.equal(stale.status, 200, 'If-Range with another ETag: the whole file')
    await stale.arrayBuffer()
    const otherUnit = await fetch(url, { headers: { range: 'items=0-9' } })
    t.equal(otherUnit.status, 200, 'a Range in another unit is ignored')
    await otherUnit.arrayBuffer()
    const outside = await fetch(url, { headers: { range: `bytes=${image.length + 10}-` } })
    t.equal(outside.status, 416)
    t.equal(outside.headers.get('content-range'), `bytes */${image.length}`)

    const tampered = url.replace(/signature=([^&])/, (_m, c: string) => `signature=${c === 'A' ? 'B' : 'A'}`)
    const refused = await fetch(tampered)
    t.equal(refused.status, 403)
    t.match(await refused.json(), { error: 'forbidden', message: /not valid/ })
    t.equal((await fetch(url.replace(/expires=(\d+)/, (_m, e: string) => `expires=${Number(e) + 1}`))).status, 403, 'a changed expiry')
    const otherId = (await ts.api('GET', '/api/firmware?target=rpi4')).body.items.find((f: { id: string }) => f.id !== firmware.id).id
    t.equal((await fetch(url.replace(firmware.id, otherId))).status, 403, 'the signature of another firmware')
    t.equal((await fetch(`${ts.httpUrl}/api/firmware/${firmware.id}/download`)).status, 403, 'no signature')
    const expired = await fetch(`${ts.httpUrl}${await signedPath(ts, firmware.id, -5)}`)
    t.equal(expired.status, 403)
    t.match(await expired.json(), { message: /expired/ })
    t.notOk(JSON.stringify(ts.logs).includes(new URL(url).searchParams.get('signature')!), 'signatures stay out of the log')

    // a stored file gone from FIRMWARE_DIR (an unmounted shared volume, say): the error of contract §4, not a broken body
    const file = path.join(ts.dataDir, 'firmware', `${firmware.sha256}.fw`)
    await rename(file, `${file}.away`)
    const missing = await fetch(url)
    t.equal(missing.status, 500)
    t.match(missing.headers.get('content-type'), /json/)
    t.match(await missing.json(), { error: 'internal_error' })
    await rename(`${file}.away`, file)
  })
})
