// The device registry's rules: just-in-time registration on first accepted connect, the `info`
// topic (firmware fields + metadata), and revocation (stored, then announced so every node kicks
// the device). Knows nothing of MQTT or HTTP.
import type { DeviceAdmission } from '../auth/device-authenticator.js'
import type { Logger } from '../logger.js'
import type { DeviceRepository, FirmwareInfo } from './types.js'
import { createKeyedQueue } from '../keyed-queue.js'
import { parseJsonObject } from '../json-payload.js'
import { discardEvents, type EventSink } from '../events/events.js'

/** Tells every Shepherd node (this one included) that a device was revoked. */
export interface RevocationAnnouncer {
  announceRevoked (serial: string): Promise<void>
}

export type InfoResult = { ok: true, firmware: FirmwareInfo } | { ok: false, reason: string }

const FIRMWARE_KEYS = ['firmware_version', 'firmware_target', 'firmware_uuid'] as const
const MAX_INFO_VALUE_LENGTH = 256
/** The metadata a device's info messages may add up to (it is served with every device listing). */
export const MAX_METADATA_BYTES = 64 * 1024

export function createDeviceRegistry (deps: { repo: DeviceRepository, announcer: RevocationAnnouncer, logger: Logger, events?: EventSink }) {
  const { repo, announcer, logger } = deps
  const events = deps.events ?? discardEvents

  const admission: DeviceAdmission = {
    async admit (serial, certificate) {
      const { revoked, created } = await repo.registerCertificate(serial, certificate.fingerprint, certificate.notAfter)
      if (created) logger.info({ serial, fingerprint: certificate.fingerprint }, 'device registered (first connect)')
      return { revoked }
    }
  }

  // Info messages of one device are applied one after another, in the order they arrived: on
  // PostgreSQL concurrent UPDATEs run on different pool connections and could commit out of
  // order, leaving an older info in the row.
  const infoQueue = createKeyedQueue()

  /** Applies an `info` payload: firmware fields go to their columns, other keys merge into metadata. */
  function recordInfo (serial: string, payload: Buffer): Promise<InfoResult> {
    return infoQueue.run(serial, () => applyInfo(serial, payload))
  }

  async function applyInfo (serial: string, payload: Buffer): Promise<InfoResult> {
    const parsed = parseJsonObject(payload, 'payload')
    if (!parsed.ok) return parsed
    const info = parsed.body
    const firmware: FirmwareInfo = {}
    const metadata: Record<string, unknown> = {}
    for (const [key, value] of Object.entries(info)) {
      if ((FIRMWARE_KEYS as readonly string[]).includes(key)) {
        if (typeof value !== 'string' || value.length > MAX_INFO_VALUE_LENGTH) {
          return { ok: false, reason: `${key} must be a string of at most ${MAX_INFO_VALUE_LENGTH} characters` }
        }
        firmware[key as keyof FirmwareInfo] = value
      } else {
        metadata[key] = value
      }
    }
    if (!await repo.recordInfo(serial, firmware, metadata, MAX_METADATA_BYTES)) {
      return { ok: false, reason: `info refused: the device's metadata would exceed ${MAX_METADATA_BYTES} bytes of JSON` }
    }
    events.emit({ type: 'device.info', data: { serial, ...firmware, metadata } })
    return { ok: true, firmware }
  }

  /** Revokes (or restores) a device; a revocation is announced so that every node kicks it. */
  async function setRevoked (serial: string, revoked: boolean): Promise<{ found: boolean }> {
    const found = await repo.setRevoked(serial, revoked)
    if (found && revoked) await announcer.announceRevoked(serial)
    if (found) logger.info({ serial }, revoked ? 'device revoked' : 'device restored')
    return { found }
  }

  return { admission, recordInfo, setRevoked, countOnline: repo.countOnline, revokedOnlineOn: repo.revokedOnlineOn }
}

export type DeviceRegistry = ReturnType<typeof createDeviceRegistry>
