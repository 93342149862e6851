// Plain device records and the repository port the device and presence domains depend on.
// Implemented by storage/repos/devices-repo.ts; the domain never sees knex.

export type DeviceStatus = 'online' | 'offline'
export type DisconnectReason = 'clean' | 'lost' | 'revoked' | 'taken_over' | 'server_shutdown'

export interface Device {
  id: number
  serial: string
  nickname: string | null
  status: DeviceStatus
  firmware_version: string | null
  firmware_target: string | null
  firmware_uuid: string | null
  metadata: Record<string, unknown>
  cert_fingerprint: string | null
  cert_not_after: Date | null
  revoked: boolean
  last_seen_at: Date | null
  group_id: number | null
  connected_at: Date | null
  disconnected_at: Date | null
  disconnect_reason: DisconnectReason | null
  node_id: string | null
  connection_id: string | null
  inserted_at: Date
  updated_at: Date
}

export interface FirmwareInfo {
  firmware_version?: string
  firmware_target?: string
  firmware_uuid?: string
}

export interface DeviceFilter {
  status?: DeviceStatus
  group_id?: number
  firmware_version?: string
  revoked?: boolean
  /** Substring of the serial or the nickname, case-insensitive. */
  q?: string
}

export interface DeviceChanges {
  nickname?: string | null
  group_id?: number | null
  /** Keys to set in metadata, and keys to remove from it. */
  metadata?: { set: Record<string, unknown>, remove: string[] }
}

export type UpdateDeviceResult = { ok: true, device: Device } | { ok: false, reason: 'not_found' | 'no_such_group' }

export interface DeviceRepository {
  /** Devices matching `filter`, ordered by serial, after the serial `after`. */
  list (filter: DeviceFilter, page: { after?: string, limit: number }): Promise<Device[]>
  find (serial: string): Promise<Device | undefined>
  update (serial: string, changes: DeviceChanges): Promise<UpdateDeviceResult>
  /** Answers false when there was no such device. */
  remove (serial: string): Promise<boolean>
  /** Inserts the device unless it exists; updates the certificate fields when they changed. Answers revoked. */
  registerCertificate (serial: string, fingerprint: string, notAfter: Date): Promise<{ revoked: boolean, created: boolean }>
  setRevoked (serial: string, revoked: boolean): Promise<boolean>
  /** Merges `metadata` in unless the result would exceed `maxMetadataBytes` of JSON; answers whether it did. */
  recordInfo (serial: string, firmware: FirmwareInfo, metadata: Record<string, unknown>, maxMetadataBytes: number): Promise<boolean>
  markOnline (serial: string, session: { nodeId: string, connectionId: string, at: Date }): Promise<void>
  /** Marks offline only if `connectionId` still holds the device; answers whether it did. */
  markOffline (serial: string, connectionId: string, reason: DisconnectReason, at: Date): Promise<boolean>
  /** Marks offline every device held by a node not in `liveNodeIds`; answers their serials. */
  sweepOffline (liveNodeIds: readonly string[], reason: DisconnectReason, at: Date): Promise<string[]>
  /** Marks offline every device held by `nodeId`; answers their serials. */
  markNodeOffline (nodeId: string, reason: DisconnectReason, at: Date): Promise<string[]>
  countOnline (): Promise<number>
  /** Revoked devices the registry has online on `nodeId` (their kick was missed). */
  revokedOnlineOn (nodeId: string): Promise<string[]>
}
