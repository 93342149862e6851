// The firmware store: files with a SemVer version for one target (and optionally one
// application), their sha256 and size computed while they stream in, never the same bytes or the
// same target+application+version twice. Knows nothing of HTTP, knex or the file system.
import { randomUUID } from 'node:crypto'
import semver from 'semver'
import type { Logger } from '../logger.js'
import { pageByTime, type Page } from '../paging.js'
import type { Firmware, FirmwareMeta, FirmwareRepository, FirmwareStorage, StagedFile } from './types.js'

const NAME = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/

export type MetaCheck = { ok: true, meta: FirmwareMeta } | { ok: false, field: string, message: string }

export type AddResult =
  | { ok: true, firmware: Firmware }
  | { ok: false, reason: 'invalid', field: string, message: string }
  | { ok: false, reason: 'duplicate', existing: Firmware, message: string }

export interface MetaInput { version?: string, target?: string, application?: string | null }

/** A SemVer version written exactly as SemVer writes it: semver itself also takes "v1.2.0" or " 1.2.0 ", which devices never report. */
function isExactSemver (version: string): boolean {
  const parsed = semver.parse(version)
  return parsed !== null && `${parsed.version}${parsed.build.length > 0 ? `+${parsed.build.join('.')}` : ''}` === version
}

export function checkFirmwareMeta (input: MetaInput): MetaCheck {
  const { version, target, application } = input
  if (version === undefined || version.length > 64 || !isExactSemver(version)) {
    return { ok: false, field: 'version', message: 'version must be a SemVer version such as 1.4.0 or 2.0.0-rc.1 (at most 64 characters)' }
  }
  if (target === undefined || !NAME.test(target)) return { ok: false, field: 'target', message: 'target must be 1–64 letters, digits, ".", "_", "+" or "-" (the devices\' firmware_target)' }
  if (application !== undefined && application !== null && !NAME.test(application)) return { ok: false, field: 'application', message: 'application must be 1–64 letters, digits, ".", "_", "+" or "-"' }
  return { ok: true, meta: { version, target, application: application ?? null } }
}

export function describeDuplicate (existing: Firmware, sha256?: string): string {
  return existing.sha256 === sha256
    ? `these bytes are already stored as firmware ${existing.id} (${existing.target} ${existing.version})`
    : `firmware ${existing.version} for ${existing.target}${existing.application === null ? '' : ` (${existing.application})`} already exists: ${existing.id}`
}

export function createFirmwareStore (deps: { repo: FirmwareRepository, storage: FirmwareStorage, maxBytes: number, logger: Logger, now?: () => Date }) {
  const { repo, storage, maxBytes, logger } = deps
  const now = deps.now ?? (() => new Date())

  /** Records a staged file (from an upload, or written by the CLI) under its meta; the file is kept only if the record is. */
  async function register (input: MetaInput, staged: StagedFile): Promise<AddResult> {
    const checked = checkFirmwareMeta(input)
    if (!checked.ok) {
      await storage.discard(staged)
      return { ok: false, reason: 'invalid', field: checked.field, message: checked.message }
    }
    if (staged.size === 0) {
      await storage.discard(staged)
      return { ok: false, reason: 'invalid', field: 'body', message: 'the firmware file is empty: send its bytes as the request body' }
    }
    const { meta } = checked
    const duplicate = await repo.findDuplicate(meta, staged.sha256)
    if (duplicate !== undefined) {
      await storage.discard(staged)
      return { ok: false, reason: 'duplicate', existing: duplicate, message: describeDuplicate(duplicate, staged.sha256) }
    }
    const firmware: Firmware = { id: randomUUID(), ...meta, sha256: staged.sha256, size: staged.size, storage_name: `${staged.sha256}.fw`, created_at: now() }
    await storage.commit(staged, firmware.storage_name)
    const inserted = await repo.insert(firmware).catch(async (error: unknown) => {
      await storage.remove(firmware.storage_name)
      throw error
    })
    if (!inserted) {
      // an upload of the same firmware committed meanwhile: the file is the same bytes or not ours to remove
      const existing = await repo.findDuplicate(meta, staged.sha256)
      if (existing?.sha256 !== staged.sha256) await storage.remove(firmware.storage_name)
      return { ok: false, reason: 'duplicate', existing: existing!, message: describeDuplicate(existing!, staged.sha256) }
    }
    logger.info({ firmware: firmware.id, version: firmware.version, target: firmware.target, size: firmware.size, sha256: firmware.sha256 }, 'firmware stored')
    return { ok: true, firmware }
  }

  /** The firmware already stored under this target, application and version, if any (checked before any bytes are read). */
  async function versionTaken (meta: FirmwareMeta): Promise<Firmware | undefined> {
    return await repo.findDuplicate(meta)
  }

  return {
    register,
    versionTaken,

    /** Streams an upload into the store. Throws FirmwareTooLarge past the limit (nothing kept). */
    async add (input: MetaInput, body: AsyncIterable<Buffer | Uint8Array>): Promise<AddResult> {
      const checked = checkFirmwareMeta(input)
      if (!checked.ok) return { ok: false, reason: 'invalid', field: checked.field, message: checked.message }
      // refused before the bytes are read when the version is taken already
      const taken = await versionTaken(checked.meta)
      if (taken !== undefined) return { ok: false, reason: 'duplicate', existing: taken, message: describeDuplicate(taken) }
      return await register(input, await storage.stage(body, maxBytes))
    },

    get: (id: string) => repo.find(id),

    /** Throws InvalidCursor for a cursor this server did not issue. */
    async list (options: { target?: string, cursor?: string, limit: number }): Promise<Page<Firmware>> {
      return await pageByTime(options.cursor, options.limit, firmware => firmware.created_at, async (before, limit) => await repo.list({ target: options.target, before, limit }))
    },

    /** Deletes the record and its file, unless an update in progress uses it. Finished updates keep what they installed. */
    async remove (id: string): Promise<'deleted' | 'in_use' | 'not_found'> {
      const firmware = await repo.find(id)
      if (firmware === undefined) return 'not_found'
      const outcome = await repo.delete(id)
      if (outcome === 'deleted') {
        await storage.remove(firmware.storage_name)
        logger.info({ firmware: id, version: firmware.version, target: firmware.target }, 'firmware deleted')
      }
      return outcome
    },

    read: (firmware: Firmware, range?: { start: number, end: number }) => storage.read(firmware.storage_name, range)
  }
}

export type FirmwareStore = ReturnType<typeof createFirmwareStore>
