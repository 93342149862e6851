// A TCP proxy in front of a real server (PostgreSQL here) that tests cut and restore to play an
// outage: `cut` destroys its connections and refuses new ones, `restore` listens again on the same
// port, `freeze` holds every byte in both directions (a server that stopped answering) until `thaw`.
import net from 'node:net'

export interface TcpProxy {
  /** `target` with the proxy's host and port. */
  url: string
  cut (): Promise<void>
  restore (): Promise<void>
  freeze (): void
  thaw (): void
}

/** Callers cut it in their teardown, after whatever uses it has closed. */
export async function startTcpProxy (target: URL): Promise<TcpProxy> {
  const sockets = new Set<net.Socket>()
  let server: net.Server | undefined
  let port = 0
  async function restore (): Promise<void> {
    if (server !== undefined) return
    const listening = net.createServer(client => {
      const upstream = net.connect(Number(target.port || 5432), target.hostname)
      for (const socket of [client, upstream]) {
        sockets.add(socket)
        socket.on('close', () => sockets.delete(socket))
        socket.on('error', () => { client.destroy(); upstream.destroy() })
      }
      client.pipe(upstream).pipe(client)
    })
    await new Promise<void>((resolve, reject) => { listening.once('error', reject).listen(port, '127.0.0.1', resolve) })
    server = listening
    port = (listening.address() as net.AddressInfo).port
  }
  async function cut (): Promise<void> {
    const closing = server
    server = undefined
    const closed = new Promise<void>(resolve => { if (closing === undefined) resolve(); else closing.close(() => { resolve() }) })
    for (const socket of sockets) socket.destroy()
    await closed
  }
  await restore()
  const url = new URL(target)
  url.host = `127.0.0.1:${port}`
  return {
    url: url.toString(),
    cut,
    restore,
    freeze () { for (const socket of sockets) socket.pause() },
    thaw () { for (const socket of sockets) socket.resume() }
  }
}
