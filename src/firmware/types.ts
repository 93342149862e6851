// Plain firmware and update records, and the ports the firmware domain depends on: the file
// storage (storage/firmware-files.ts, local disk; S3-compatible storage would implement the same)
// and the repositories (storage/repos/firmware-repo.ts). The domain never sees knex or fs.
import type { Readable } from 'node:stream'
import type { TimeKey } from '../paging.js'

export interface Firmware {
  id: string
  version: string
  target: string
  application: string | null
  sha256: string
  size: number
  storage_name: string
  created_at: Date
}

export type FirmwareMeta = Pick<Firmware, 'version' | 'target' | 'application'>

export const UPDATE_STATES = ['pending', 'downloading', 'applying', 'complete', 'failed'] as const
export type UpdateState = typeof UPDATE_STATES[number]
export const ACTIVE_UPDATE_STATES: readonly UpdateState[] = ['pending', 'downloading', 'applying']

/** Why an update failed: the device said so, it went quiet, it came back on the old version, a forced update replaced it. */
export type FailureReason = 'device' | 'timeout' | 'reverted' | 'superseded'

export interface Update {
  id: string
  serial: string
  /** Null once the firmware was deleted; version, target, sha256 and size stay. */
  firmware_id: string | null
  version: string
  target: string
  sha256: string
  size: number
  /** The device's firmware_version when the update was created. */
  previous_version: string | null
  state: UpdateState
  progress: number | null
  error: string | null
  failure_reason: FailureReason | null
  /** The `update` command that carried the offer. */
  command_id: string | null
  rollout_id: string | null
  created_at: Date
  /** A pending update not started by then fails (timeout). */
  expires_at: Date
  /** The latest progress: a state change or a higher progress (the stage timeout's clock). */
  status_at: Date
  downloading_at: Date | null
  applying_at: Date | null
  /** When it became complete or failed. */
  completed_at: Date | null
}

export type NewUpdate = Pick<Update, 'id' | 'serial' | 'firmware_id' | 'version' | 'target' | 'sha256' | 'size' | 'previous_version' | 'rollout_id' | 'created_at' | 'expires_at'>

export interface Rollout {
  id: string
  group_id: number | null
  firmware_id: string | null
  version: string
  created_at: Date
}

export interface RolloutCounts { total: number, states: Record<UpdateState, number> }

/** A file being written to the store: hashed and counted as it arrives. */
export interface StagedFile { key: string, size: number, sha256: string }

export interface FirmwareStorage {
  /** Streams `body` into a staging object; rejects with FirmwareTooLarge past `maxBytes`, keeping nothing. */
  stage (body: AsyncIterable<Buffer | Uint8Array>, maxBytes: number): Promise<StagedFile>
  /** Makes a staged object permanent under `name`. */
  commit (staged: StagedFile, name: string): Promise<void>
  discard (staged: StagedFile): Promise<void>
  /** The stored bytes, or the inclusive byte range of them; rejects when the stored object cannot be opened. */
  read (name: string, range?: { start: number, end: number }): Promise<Readable>
  remove (name: string): Promise<void>
}

export class FirmwareTooLarge extends Error {
  constructor (readonly maxBytes: number) {
    super(`firmware files are limited to ${maxBytes} bytes (FIRMWARE_MAX_SIZE)`)
  }
}

/** The firmware an update or rollout was being recorded for was deleted meanwhile. */
export class FirmwareGone extends Error {
  constructor () { super('the firmware was deleted meanwhile') }
}

export interface FirmwareRepository {
  /** Inserts the record; false when its sha256 or its target+application+version is already stored. */
  insert (firmware: Firmware): Promise<boolean>
  find (id: string): Promise<Firmware | undefined>
  findDuplicate (meta: FirmwareMeta, sha256?: string): Promise<Firmware | undefined>
  /** Newest first, before the keyset `before`. */
  list (options: { target?: string, before?: TimeKey, limit: number }): Promise<Firmware[]>
  /** Deletes the record unless an update in progress uses it ('in_use'). */
  delete (id: string): Promise<'deleted' | 'in_use' | 'not_found'>
}

/** A device's report on its `update_status` topic, validated. */
export interface StatusReport { updateId: string, state: UpdateState, progress: number | null, error: string | null }

export interface UpdateRepository {
  /**
   * Inserts the updates (pending) in one transaction; with `supersede`, first fails the devices'
   * updates in progress. A device that has one in progress (not superseded) gets none: `inserted`
   * holds only the others. Throws FirmwareGone when the firmware was deleted meanwhile.
   */
  insertMany (updates: NewUpdate[], options: { supersede: boolean, at: Date }): Promise<{ inserted: Update[], superseded: Update[] }>
  /** Records the command that carried each update's offer. */
  setCommands (pairs: Array<{ id: string, commandId: string }>): Promise<void>
  find (id: string): Promise<Update | undefined>
  findActive (serial: string): Promise<Update | undefined>
  findActiveMany (serials: string[]): Promise<Update[]>
  listForDevice (serial: string, options: { before?: TimeKey, limit: number }): Promise<Update[]>
  /** Applies a report to the device's update while it is in progress and not past the reported stage; undefined otherwise. */
  report (serial: string, id: string, change: { state: UpdateState, progress: number | null, error: string | null, failure_reason: FailureReason | null }, at: Date): Promise<Update | undefined>
  /** Fails updates in progress that made no progress for too long, or were never started before they expired. */
  failStale (stalledSince: Date, now: Date): Promise<Update[]>
  /** Throws FirmwareGone when the firmware was deleted meanwhile. */
  insertRollout (rollout: Rollout): Promise<void>
  findRollout (id: string): Promise<(Rollout & RolloutCounts) | undefined>
}
