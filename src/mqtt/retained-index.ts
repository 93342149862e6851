// Aedes's in-memory persistence answers every SUBSCRIBE by scanning all retained messages, so one
// retained status per device makes each connect O(fleet) and a reconnect storm O(N²). This keeps
// an exact-topic index beside it: a wildcard-free subscription is a map lookup; wildcard
// subscriptions (observers) still go to the original pattern scan.
// (aedes-persistence-redis already looks exact topics up by key, so it needs no index.)
import { Readable } from 'node:stream'

interface RetainedPacket { cmd?: string, topic: string, payload: Buffer, qos?: number }

export interface RetainedPersistence {
  storeRetained (packet: RetainedPacket, callback?: (error?: Error | null) => void): Promise<void> | void
  createRetainedStreamCombi (patterns: string[]): Readable
}

export function hasWildcard (topicFilter: string): boolean {
  return topicFilter.includes('+') || topicFilter.includes('#')
}

export function withRetainedIndex<P extends RetainedPersistence> (persistence: P): P {
  const retained = new Map<string, RetainedPacket>()
  const storeRetained = persistence.storeRetained.bind(persistence)
  const scan = persistence.createRetainedStreamCombi.bind(persistence)

  persistence.storeRetained = (packet, callback) => {
    if (packet.payload.length === 0) retained.delete(packet.topic)
    // what Aedes reads of a retained packet it delivers, not the whole packet: one per device
    else retained.set(packet.topic, { cmd: packet.cmd, topic: packet.topic, payload: packet.payload, qos: packet.qos })
    return storeRetained(packet, callback)
  }
  persistence.createRetainedStreamCombi = (patterns) => {
    if (patterns.some(hasWildcard)) return scan(patterns)
    const found: RetainedPacket[] = []
    for (const topic of patterns) {
      const packet = retained.get(topic)
      if (packet !== undefined) found.push(packet)
    }
    return Readable.from(found)
  }
  return persistence
}
