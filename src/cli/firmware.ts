// `shepherd firmware upload FILE --version V --target T [--application A]`: copies the file into
// the firmware store (FIRMWARE_DIR, as the server is configured) with a progress bar, hashing it
// on the way, and records it: through the running server on the embedded database, on the
// database itself otherwise. The same checks as the REST upload apply (SemVer, duplicates).
import { createReadStream } from 'node:fs'
import { stat } from 'node:fs/promises'
import { Transform } from 'node:stream'
import { loadConfig } from '../config.js'
import { CommandError, UsageError } from '../errors.js'
import { checkFirmwareMeta, createFirmwareStore, describeDuplicate, type AddResult } from '../firmware/firmware-store.js'
import type { Firmware } from '../firmware/types.js'
import type { Database } from '../storage/db.js'
import { createLogger } from '../logger.js'
import { createFirmwareFiles } from '../storage/firmware-files.js'
import { createFirmwareRepository } from '../storage/repos/firmware-repo.js'
import { parseCommand, withSubcommands, type Output } from './main.js'
import { createProgressBar } from './progress.js'
import { whileStoppable } from './stop-signals.js'
import { viaServerOrDatabase } from './via-server.js'

async function upload (args: string[], output: Output): Promise<void> {
  const { values, positionals: [file] } = parseCommand(args, {
    version: { type: 'string' },
    target: { type: 'string' },
    application: { type: 'string' }
  }, 1)
  const checked = checkFirmwareMeta(values)
  if (!checked.ok) throw new UsageError(checked.message.replace(/^(version|target|application)/, '--$1'))
  const size = await stat(file!).then(found => found.isFile() ? found.size : undefined, () => undefined)
  if (size === undefined) throw new CommandError(`${file} is not a readable file`)
  if (size === 0) throw new CommandError(`${file} is empty: a firmware file needs its bytes`)

  const config = loadConfig()
  if (size > config.firmwareMaxBytes) throw new CommandError(`${file} has ${size} bytes; firmware files are limited to ${config.firmwareMaxBytes} (FIRMWARE_MAX_SIZE)`)
  const storage = await createFirmwareFiles(config.firmwareDir)
  const storeOn = (db: Database) => createFirmwareStore({ repo: createFirmwareRepository(db.knex), storage, maxBytes: config.firmwareMaxBytes, logger: createLogger('silent') })
  // a taken version is refused before a possibly large file is copied
  const taken = await viaServerOrDatabase<Firmware | null>(config, 'firmware.versionTaken', { meta: checked.meta }, async (db) => await storeOn(db).versionTaken(checked.meta) ?? null)
  if (taken !== null) throw new CommandError(describeDuplicate(taken))
  const bar = createProgressBar('uploading', size)
  const counted = new Transform({ transform (chunk: Buffer, _encoding, done) { bar.advance(chunk.length); done(null, chunk) } })
  // Ctrl-C while the bytes stream in: the staged part is removed (stage() cleans up after a failed stream)
  const staged = await whileStoppable(storage.stage(createReadStream(file!).pipe(counted), config.firmwareMaxBytes), () => {
    counted.destroy(new CommandError('upload interrupted; nothing was kept'))
  })
  bar.done()

  const result = await viaServerOrDatabase<AddResult>(config, 'firmware.register', { meta: checked.meta, staged }, async (db) => await storeOn(db).register(checked.meta, staged)).catch(async (error: unknown) => {
    await storage.discard(staged)
    throw error
  })
  if (!result.ok) throw new CommandError(result.message)
  const { id, version, target, application, sha256 } = result.firmware
  output.out(`firmware ${id}: ${target}${application === null ? '' : ` (${application})`} ${version}, ${size} bytes, sha256 ${sha256}`)
}

export const firmware = withSubcommands('firmware', { upload })
