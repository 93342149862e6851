// OTA updates, tracked from offer to outcome. Starting one records it (pending), publishes the
// offer retained on the device's `firmware` topic (a device that is offline gets it when it
// subscribes) and sends it as an `update` command. The device's `update_status` reports move it
// through downloading and applying; it is complete when the device says so or comes back
// reporting the new firmware_version, failed when the device says so, comes back on the old
// version after applying (reverted), or makes no progress for too long (timeout: only another
// stage or a higher progress restarts the clock, not the same report again). A finished update's
// retained offer is cleared. Offers carry a signed download URL that expires, so every delivery
// (a command sent later, a device subscribing again) gets a freshly signed one.
// Knows nothing of MQTT, HTTP or knex.
import { randomUUID } from 'node:crypto'
import type { Commands } from '../commands/commands.js'
import { MAX_TTL_SECONDS } from '../commands/command-request.js'
import type { Command } from '../commands/types.js'
import type { EventSink } from '../events/events.js'
import { createKeyedQueue } from '../keyed-queue.js'
import { parseJsonObject } from '../json-payload.js'
import type { Logger } from '../logger.js'
import { pageByTime, type Page } from '../paging.js'
import type { Publish } from '../ports.js'
import { deviceTopic } from '../topics.js'
import type { FirmwareStore } from './firmware-store.js'
import { ACTIVE_UPDATE_STATES, FirmwareGone, UPDATE_STATES, type Firmware, type Rollout, type RolloutCounts, type NewUpdate, type StatusReport, type Update, type UpdateRepository } from './types.js'

export const DEFAULT_UPDATE_TTL_SECONDS = 7 * 86_400

/** What the updates domain needs to know of a device. */
export interface UpdateTarget { serial: string, status: 'online' | 'offline', revoked: boolean, firmware_version: string | null, firmware_target: string | null }

export interface UpdateRequest { firmware_id: string, force?: boolean, ttl_seconds?: number }

export type StartRefusal =
  | { ok: false, reason: 'invalid', field: string, message: string }
  | { ok: false, reason: 'firmware_not_found' | 'not_found' | 'revoked' }
  | { ok: false, reason: 'target_mismatch', message: string }
  | { ok: false, reason: 'update_in_progress', update: Update }

export type StartResult = { ok: true, update: Update } | StartRefusal

export type GroupStartResult =
  | { ok: true, rollout: Rollout, updates: Update[], skipped: Array<{ serial: string, reason: string, message: string }> }
  | { ok: false, reason: 'invalid', field: string, message: string }
  | { ok: false, reason: 'not_found' | 'firmware_not_found' }

/** The offer of contract §3: the `update` command's payload and the retained `firmware` message. */
export interface Offer { update_id: string, firmware_id: string, version: string, target: string, url: string, sha256: string, size: number, reboot: true }

export interface UpdatesDeps {
  repo: UpdateRepository
  firmware: Pick<FirmwareStore, 'get'>
  findDevice (serial: string): Promise<UpdateTarget | undefined>
  /** A group's members; undefined when there is no such group. */
  groupMembers (groupId: number): Promise<UpdateTarget[] | undefined>
  commands: Pick<Commands, 'issueEach'>
  publish: Publish
  /** An absolute, freshly signed download URL for the firmware. */
  downloadUrl (firmwareId: string): string
  events: EventSink
  logger: Logger
  stageTimeoutSeconds: number
  now? (): Date
}

function parseStatus (payload: Buffer): { ok: true, report: StatusReport } | { ok: false, reason: string } {
  const parsed = parseJsonObject(payload, 'an update status')
  if (!parsed.ok) return parsed
  const { update_id: id, status, progress, error } = parsed.body
  if (typeof id !== 'string' || !/^[0-9a-f-]{36}$/i.test(id)) return { ok: false, reason: 'update_id must be an update id (uuid)' }
  if (!(UPDATE_STATES as readonly unknown[]).includes(status)) return { ok: false, reason: `status must be one of ${UPDATE_STATES.join(', ')} (update ${id})` }
  if (progress !== undefined && progress !== null && !(Number.isInteger(progress) && (progress as number) >= 0 && (progress as number) <= 100)) {
    return { ok: false, reason: `progress must be an integer from 0 to 100 (update ${id})` }
  }
  if (error !== undefined && error !== null && typeof error !== 'string') return { ok: false, reason: `error must be a string (update ${id})` }
  return {
    ok: true,
    report: { updateId: id.toLowerCase(), state: status as StatusReport['state'], progress: (progress as number | undefined) ?? null, error: typeof error === 'string' ? error.slice(0, 4096) : null }
  }
}

export function createUpdates (deps: UpdatesDeps) {
  const { repo, publish, events, logger } = deps
  const now = deps.now ?? (() => new Date())
  // a device's reports (update_status, info) are applied in the order they arrived
  const reports = createKeyedQueue()

  const offerOf = (update: Update): Offer => ({
    update_id: update.id, firmware_id: update.firmware_id!, version: update.version, target: update.target,
    url: deps.downloadUrl(update.firmware_id!), sha256: update.sha256, size: update.size, reboot: true
  })

  async function publishOffer (update: Update): Promise<void> {
    await publish(deviceTopic(update.serial, 'firmware'), JSON.stringify(offerOf(update)), { qos: 1, retain: true })
  }

  function emitProgress (update: Update): void {
    events.emit({
      type: 'update.progress',
      data: {
        serial: update.serial, update_id: update.id, status: update.state,
        ...(update.progress === null ? {} : { progress: update.progress }),
        ...(update.error === null ? {} : { error: update.error }),
        ...(update.failure_reason === null ? {} : { reason: update.failure_reason })
      }
    })
  }

  /** A finished update: its retained offer is cleared, and everyone watching is told. */
  async function finished (update: Update): Promise<void> {
    logger.info({ serial: update.serial, update: update.id, version: update.version, state: update.state, reason: update.failure_reason, error: update.error }, `update ${update.state}`)
    emitProgress(update)
    await publish(deviceTopic(update.serial, 'firmware'), '', { qos: 1, retain: true }).catch((error: unknown) => {
      logger.warn({ serial: update.serial, update: update.id, err: error }, 'could not clear the retained firmware offer')
    })
  }

  const afterChange = async (update: Update): Promise<void> => {
    if (update.state === 'complete' || update.state === 'failed') await finished(update)
    else emitProgress(update)
  }

  /** The request's ttl and its firmware, or why not. */
  async function checkRequest (request: UpdateRequest): Promise<
    | { ok: true, firmware: Firmware, request: UpdateRequest & { ttlSeconds: number } }
    | { ok: false, reason: 'invalid', field: string, message: string }
    | { ok: false, reason: 'firmware_not_found' }> {
    const ttl = request.ttl_seconds ?? DEFAULT_UPDATE_TTL_SECONDS
    if (!Number.isInteger(ttl) || ttl < 1 || ttl > MAX_TTL_SECONDS) {
      return { ok: false, reason: 'invalid', field: 'ttl_seconds', message: `ttl_seconds must be an integer from 1 to ${MAX_TTL_SECONDS}` }
    }
    const firmware = await deps.firmware.get(request.firmware_id)
    if (firmware === undefined) return { ok: false, reason: 'firmware_not_found' }
    return { ok: true, firmware, request: { ...request, ttlSeconds: ttl } }
  }

  /** Starts the update on each device (one statement for all); answers each one's result, in order. */
  async function startMany (targets: UpdateTarget[], firmware: Firmware, request: UpdateRequest & { ttlSeconds: number }, rolloutId: string | null): Promise<StartResult[]> {
    const force = request.force === true
    const results: StartResult[] = new Array(targets.length)
    const indexOf = new Map<string, number>()
    const byId = new Map<string, UpdateTarget>()
    const at = now()
    const drafts: NewUpdate[] = []
    for (const [i, device] of targets.entries()) {
      if (device.revoked) results[i] = { ok: false, reason: 'revoked' }
      else if (!force && device.firmware_target !== null && device.firmware_target !== firmware.target) {
        results[i] = { ok: false, reason: 'target_mismatch', message: `firmware ${firmware.id} is for target ${firmware.target}; device ${device.serial} reports ${device.firmware_target} (force: true overrides)` }
      } else {
        indexOf.set(device.serial, i)
        const draft: NewUpdate = {
          id: randomUUID(), serial: device.serial, firmware_id: firmware.id, version: firmware.version, target: firmware.target, sha256: firmware.sha256, size: firmware.size,
          previous_version: device.firmware_version, rollout_id: rolloutId, created_at: at, expires_at: new Date(at.getTime() + request.ttlSeconds * 1000)
        }
        drafts.push(draft)
        byId.set(draft.id, device)
      }
    }
    if (drafts.length === 0) return results
    const { inserted, superseded } = await repo.insertMany(drafts, { supersede: force, at })
    for (const update of superseded) {
      logger.info({ serial: update.serial, update: update.id, reason: 'superseded' }, 'update superseded')
      emitProgress(update)
    }

    // a device with an update in progress got none
    const started = new Set(inserted.map(update => update.serial))
    const busy = drafts.filter(draft => !started.has(draft.serial)).map(draft => draft.serial)
    if (busy.length > 0) {
      const active = new Map((await repo.findActiveMany(busy)).map(update => [update.serial, update]))
      const finishedMeanwhile: UpdateTarget[] = []
      for (const serial of busy) {
        const update = active.get(serial)
        if (update !== undefined) results[indexOf.get(serial)!] = { ok: false, reason: 'update_in_progress', update }
        else finishedMeanwhile.push(targets[indexOf.get(serial)!]!)
      }
      const retried = await startMany(finishedMeanwhile, firmware, request, rolloutId)
      for (const [i, result] of retried.entries()) results[indexOf.get(finishedMeanwhile[i]!.serial)!] = result
    }
    if (inserted.length === 0) return results

    for (const update of inserted) {
      logger[targets.length === 1 ? 'info' : 'debug']({ serial: update.serial, update: update.id, firmware: firmware.id, version: firmware.version, from: update.previous_version }, 'update started')
      emitProgress(update)
    }
    await Promise.all(inserted.map(publishOffer))
    const commands = await deps.commands.issueEach(inserted.map(update => ({ target: byId.get(update.id)!, command: 'update' as const, payload: { ...offerOf(update) } })), request.ttlSeconds)
    await repo.setCommands(inserted.map((update, i) => ({ id: update.id, commandId: commands[i]!.id })))
    for (const [i, update] of inserted.entries()) results[indexOf.get(update.serial)!] = { ok: true, update: { ...update, command_id: commands[i]!.id } }
    return results
  }

  return {
    async start (serial: string, request: UpdateRequest): Promise<StartResult> {
      const checked = await checkRequest(request)
      if (!checked.ok) return checked
      const device = await deps.findDevice(serial)
      if (device === undefined) return { ok: false, reason: 'not_found' }
      try {
        const [result] = await startMany([device], checked.firmware, checked.request, null)
        return result!
      } catch (error) {
        if (error instanceof FirmwareGone) return { ok: false, reason: 'firmware_not_found' }
        throw error
      }
    },

    /** Starts the update on every member; members it cannot start on are listed with the reason. */
    async startForGroup (groupId: number, request: UpdateRequest): Promise<GroupStartResult> {
      const checked = await checkRequest(request)
      if (!checked.ok) return checked
      const { firmware } = checked
      const members = await deps.groupMembers(groupId)
      if (members === undefined) return { ok: false, reason: 'not_found' }
      const rollout: Rollout = { id: randomUUID(), group_id: groupId, firmware_id: firmware.id, version: firmware.version, created_at: now() }
      let results: StartResult[]
      try {
        await repo.insertRollout(rollout)
        results = await startMany(members, firmware, checked.request, rollout.id)
      } catch (error) {
        // deleted meanwhile: a rollout row may stay, with no updates and its firmware_id cleared
        if (error instanceof FirmwareGone) return { ok: false, reason: 'firmware_not_found' }
        throw error
      }
      const updates: Update[] = []
      const skipped: Array<{ serial: string, reason: string, message: string }> = []
      for (const [i, result] of results.entries()) {
        const { serial } = members[i]!
        if (result.ok) updates.push(result.update)
        else skipped.push({ serial, reason: result.reason, message: describeRefusal(result, `device ${serial}`) })
      }
      logger.info({ group: groupId, rollout: rollout.id, version: firmware.version, started: updates.length, skipped: skipped.length }, 'update rolled out to a group')
      return { ok: true, rollout, updates, skipped }
    },

    /** A message on the device's `update_status` topic. */
    recordStatus: (serial: string, payload: Buffer): Promise<{ ok: true } | { ok: false, reason: string }> => reports.run(serial, async () => {
      const parsed = parseStatus(payload)
      if (!parsed.ok) return parsed
      const { report } = parsed
      const update = await repo.report(serial, report.updateId, {
        state: report.state, progress: report.progress, error: report.error, failure_reason: report.state === 'failed' ? 'device' : null
      }, now())
      if (update === undefined) {
        const known = await repo.find(report.updateId)
        // another device's update id is answered like an unknown one
        if (known?.serial !== serial) return { ok: false, reason: `no update ${report.updateId} for this device` }
        // the final report again (a QoS 1 duplicate, or `complete` after the new version in info already completed it)
        if (known.state === report.state) return { ok: true as const }
        return { ok: false, reason: `update ${report.updateId} is already ${known.state}` }
      }
      await afterChange(update)
      return { ok: true as const }
    }),

    /** The device reported its firmware in `info`, on a connection made at `connectedAt`. */
    infoReported: (serial: string, firmwareVersion: string, connectedAt: Date): Promise<void> => reports.run(serial, async () => {
      const update = await repo.findActive(serial)
      if (update === undefined) return
      let changed: Update | undefined
      const rebootedAfterApplying = update.state === 'applying' && update.applying_at !== null && connectedAt > update.applying_at
      // the version the device ran before proves nothing until it has applied the update and come back
      if (firmwareVersion === update.version && (update.version !== update.previous_version || rebootedAfterApplying)) {
        changed = await repo.report(serial, update.id, { state: 'complete', progress: 100, error: null, failure_reason: null }, now())
      } else if (rebootedAfterApplying && firmwareVersion !== update.version) {
        changed = await repo.report(serial, update.id, {
          state: 'failed', progress: update.progress, failure_reason: 'reverted',
          error: `the device came back with firmware ${firmwareVersion} after applying ${update.version}`
        }, now())
      }
      if (changed !== undefined) await afterChange(changed)
    }),

    /** The device listens on its `firmware` topic again: its offer is published anew with a fresh URL. */
    async deviceListening (serial: string): Promise<void> {
      const update = await repo.findActive(serial)
      if (update !== undefined && update.state !== 'applying' && update.firmware_id !== null) await publishOffer(update)
    },

    /**
     * The payload to deliver for a command: an `update` command gets a freshly signed URL, or is
     * not delivered (undefined) when its update is no longer in progress.
     */
    async commandPayload (command: Command): Promise<Record<string, unknown> | undefined> {
      if (command.command !== 'update') return command.payload
      const update = await repo.find(String(command.payload.update_id))
      if (update === undefined) return command.payload // sent by hand, not by an update
      if (!ACTIVE_UPDATE_STATES.includes(update.state) || update.firmware_id === null) return undefined
      return { ...command.payload, url: deps.downloadUrl(update.firmware_id) }
    },

    /**
     * Fails updates that made no progress (no stage change, no higher progress) for the stage
     * timeout while downloading or applying, or were not started before they expired.
     */
    async failStale (): Promise<number> {
      const at = now()
      const failed = await repo.failStale(new Date(at.getTime() - deps.stageTimeoutSeconds * 1000), at)
      for (const update of failed) await finished(update)
      return failed.length
    },

    get: (id: string) => repo.find(id),

    deviceExists: async (serial: string) => await deps.findDevice(serial) !== undefined,

    /** Throws InvalidCursor for a cursor this server did not issue. */
    async listForDevice (serial: string, options: { cursor?: string, limit: number }): Promise<Page<Update>> {
      return await pageByTime(options.cursor, options.limit, update => update.created_at, async (before, limit) => await repo.listForDevice(serial, { before, limit }))
    },

    /** A group rollout with its updates counted by state; undefined when it is not that group's. */
    async rollout (groupId: number, id: string): Promise<(Rollout & RolloutCounts) | undefined> {
      const rollout = await repo.findRollout(id)
      return rollout?.group_id === groupId ? rollout : undefined
    }
  }
}

export function describeRefusal (refusal: StartRefusal, what: string): string {
  switch (refusal.reason) {
    case 'invalid': case 'target_mismatch': return refusal.message
    case 'firmware_not_found': return 'no such firmware'
    case 'not_found': return `${what} not found`
    case 'revoked': return `${what} is revoked; unrevoke it before updating it`
    case 'update_in_progress': return `${what} has update ${refusal.update.id} in progress (${refusal.update.state}); force: true replaces it`
  }
}

export type Updates = ReturnType<typeof createUpdates>
