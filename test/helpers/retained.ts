// Reads the broker's retained store directly: what a subscriber to `topic` would be sent.
import type { TestServer } from './server.js'

type RetainedStore = { createRetainedStreamCombi (patterns: string[]): AsyncIterable<{ topic: string, payload: Buffer }> }

/** The retained payload of `topic` on this node, or undefined when nothing is retained. */
export async function retainedPayload (ts: TestServer, topic: string): Promise<Buffer | undefined> {
  const persistence = (ts.server.broker.aedes as unknown as { persistence: RetainedStore }).persistence
  for await (const packet of persistence.createRetainedStreamCombi([topic])) {
    if (packet.topic === topic) return packet.payload
  }
  return undefined
}

/** The retained JSON of `topic`, parsed. */
export async function retainedJson (ts: TestServer, topic: string): Promise<Record<string, unknown> | undefined> {
  const payload = await retainedPayload(ts, topic)
  return payload === undefined ? undefined : JSON.parse(payload.toString('utf8')) as Record<string, unknown>
}
