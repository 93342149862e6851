// What an observer may do (contract §3): subscribe to `shepherd/#` and `$SYS/#` and filters inside
// them, receive the fleet's topics and the broker's `$SYS/broker/…` figures, and publish nothing —
// except the connection notices a stock Mosquitto bridge publishes about itself, which are
// acknowledged and dropped so that a bridge with default settings keeps its connection.

export function authorizeObserverSubscribe (filter: string): { ok: true } | { ok: false, reason: string } {
  // `shepherd/#` also matches its parent level `shepherd` (MQTT-4.7.1-2), so that filter is inside it too
  if (filter === 'shepherd' || filter.startsWith('shepherd/') || filter === '$SYS' || filter.startsWith('$SYS/')) return { ok: true }
  return { ok: false, reason: 'an observer may subscribe to shepherd/# and $SYS/# and filters inside them' }
}

/** Whether a message on `topic` reaches an observer (internal `$SYS/<broker id>/…` and `$shepherd/…` do not). */
export function observerMayReceive (topic: string): boolean {
  return topic.startsWith('shepherd/') || topic.startsWith('$SYS/broker/')
}

/** A Mosquitto bridge's notice of its own state (`notifications true`, the default), and its will. */
export function isBridgeNotification (clientId: string, topic: string): boolean {
  return topic === `$SYS/broker/connection/${clientId}/state`
}

/** Refusals of observer logins, with their CONNACK return codes. */
export const OBSERVER_REFUSAL_CODES = {
  observer_bad_credentials: 4,
  /** Too many logins being checked at once: server unavailable, try again later. */
  observer_logins_busy: 3,
  observer_client_id_is_a_device: 2
} as const
