// Firmware files on local disk (FIRMWARE_DIR): an upload is streamed into `.incoming/` while it
// is hashed and counted, then renamed into place, so a half-written file is never served and an
// interrupted upload leaves nothing behind under its final name.
import { createHash, randomUUID } from 'node:crypto'
import { createWriteStream } from 'node:fs'
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises'
import path from 'node:path'
import { Transform } from 'node:stream'
import { pipeline } from 'node:stream/promises'
import { FirmwareTooLarge, type FirmwareStorage } from '../firmware/types.js'

const STALE_INCOMING_MS = 24 * 3600_000

export async function createFirmwareFiles (dir: string): Promise<FirmwareStorage> {
  const incoming = path.join(dir, '.incoming')
  await mkdir(incoming, { recursive: true })
  // uploads cut off by a crash
  for (const name of await readdir(incoming)) {
    const file = path.join(incoming, name)
    const { mtimeMs } = await stat(file).catch(() => ({ mtimeMs: Date.now() }))
    if (Date.now() - mtimeMs > STALE_INCOMING_MS) await rm(file, { force: true })
  }
  const staging = (staged: { key: string }): string => {
    if (!/^[0-9a-f-]{36}$/.test(staged.key)) throw new Error(`not a staged firmware file: ${staged.key}`)
    return path.join(incoming, staged.key)
  }
  const stored = (name: string): string => {
    if (!/^[\w.-]+$/.test(name) || name.startsWith('.')) throw new Error(`not a firmware file name: ${name}`)
    return path.join(dir, name)
  }

  return {
    async stage (body, maxBytes) {
      const key = randomUUID()
      const file = path.join(incoming, key)
      const hash = createHash('sha256')
      let size = 0
      const counter = new Transform({
        transform (chunk: Buffer, _encoding, done) {
          size += chunk.length
          if (size > maxBytes) return done(new FirmwareTooLarge(maxBytes))
          hash.update(chunk)
          done(null, chunk)
        }
      })
      try {
        await pipeline(body, counter, createWriteStream(file, { flags: 'wx' }))
      } catch (error) {
        await rm(file, { force: true })
        throw error
      }
      return { key, size, sha256: hash.digest('hex') }
    },

    async commit (staged, name) {
      await rename(staging(staged), stored(name))
    },

    async discard (staged) {
      await rm(staging(staged), { force: true })
    },

    async read (name, range) {
      const file = await open(stored(name)) // opened first: a missing file is an error before any byte is answered
      return file.createReadStream(range)
    },

    async remove (name) {
      await rm(stored(name), { force: true })
    }
  }
}
