// A connection that stops reading must not hold up anyone else. Aedes calls a delivery done only
// once a full socket has drained, and mqemitter holds each message until every subscriber's
// delivery is done, with a bounded number in flight: one observer that stops reading (a paused
// mosquitto_sub, a bridge on a slow link), or one device that publishes and never reads its errors
// topic, stalled every publisher on the broker until Aedes's drainTimeout (60 s) closed it. Here a
// delivery to a full socket is done at once (the bytes wait in the connection's buffer) and a
// connection whose buffer grows past its cap is closed.
import type { Client } from 'aedes'

/** Bytes a connection may have waiting to be sent before it is closed as not reading. */
export const MAX_BUFFERED_BYTES = 8 * 1024 * 1024

type Done = (error: Error | null, client: Client) => void

export function neverWaitForDrain (client: Client, maxBufferedBytes: number, onOverflow: (client: Client, bufferedBytes: number) => void): void {
  const conn = client.conn as unknown as { writableLength: number, destroy (error?: Error): void }
  ;(client as unknown as { waitForDrain (done: Done): void }).waitForDrain = (done) => {
    const buffered = conn.writableLength
    if (buffered > maxBufferedBytes) {
      onOverflow(client, buffered)
      conn.destroy(new Error(`the client stopped reading: ${buffered} bytes waiting to be sent`))
    }
    setImmediate(done, null, client)
  }
}
