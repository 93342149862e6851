// The live events operators watch on GET /api/events (contract §4), and the port the domain emits
// them through. The domain (presence, registry, later commands and updates) only knows `EventSink`;
// the composition root implements it with the broker's message bus so every node sees every event.
import type { DisconnectReason } from '../devices/types.js'

/** Every event's data, by type; `serial` is always there (SSE clients filter on it). */
export interface EventData {
  'device.online': { serial: string, at: string }
  /** `deleted`: a connected device was deleted (its registry row, which presence follows, is gone). */
  'device.offline': { serial: string, reason: DisconnectReason | 'deleted', at: string }
  'device.info': { serial: string, firmware_version?: string, firmware_target?: string, firmware_uuid?: string, metadata: Record<string, unknown> }
  /** A device's answer on its `replies` topic, once recorded. */
  'command.reply': { serial: string, id: string, command: string, status: 'ok' | 'error', round_trip_ms: number | null, result?: unknown, error?: string }
  /** An update changed state or progress (a device's `update_status` report, or the server's own decision). */
  'update.progress': { serial: string, update_id: string, status: string, progress?: number, error?: string, reason?: string }
}

export type EventType = keyof EventData

// A record, so that adding a type to EventData without listing it here does not compile.
const TYPES: Record<EventType, true> = {
  'device.online': true, 'device.offline': true, 'device.info': true, 'command.reply': true, 'update.progress': true
}
export const EVENT_TYPES = Object.keys(TYPES) as readonly EventType[]

export function isEventType (name: string): name is EventType {
  return Object.hasOwn(TYPES, name)
}

export type ShepherdEvent = { [T in EventType]: { type: T, data: EventData[T] } }[EventType]

/** Where the domain sends events. Fire and forget: a failure to deliver never fails the caller. */
export interface EventSink {
  emit (event: ShepherdEvent): void
}

export const discardEvents: EventSink = { emit () {} }
