// Binding a port, with the error a person can act on: which setting names the port in use.
import type { Server } from 'node:net'
import { StartupError } from './errors.js'

export async function listenOn (server: Server, port: number, host: string, setting: string): Promise<number> {
  await new Promise<void>((resolve, reject) => {
    const onError = (error: NodeJS.ErrnoException): void => {
      server.off('listening', onListening)
      if (error.code === 'EADDRINUSE') reject(new StartupError(`${setting}=${port}: port ${port} on ${host} is already in use; set ${setting} to a free port`, { cause: error }))
      else if (error.code === 'EACCES') reject(new StartupError(`${setting}=${port}: not allowed to listen on port ${port}; set ${setting} to a port above 1023`, { cause: error }))
      else if (error.code === 'ENOTFOUND' || error.code === 'EAI_AGAIN' || error.code === 'EADDRNOTAVAIL') {
        reject(new StartupError(`HOST=${host}: not an address of this machine (${error.code}); set HOST to one of its addresses, or 0.0.0.0 for all`, { cause: error }))
      }
      else reject(error)
    }
    const onListening = (): void => { server.off('error', onError); resolve() }
    server.once('error', onError)
    server.once('listening', onListening)
    server.listen(port, host)
  })
  const address = server.address()
  return typeof address === 'object' && address !== null ? address.port : port
}
