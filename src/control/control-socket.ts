// A local control channel for the CLI while the server runs on the embedded database (PGlite
// admits one process only): a Unix socket in $DATA_DIR, guarded by file permissions (0600),
// carrying JSON requests for named operations. With DATABASE_URL the CLI uses PostgreSQL directly.
// The socket is also the embedded database's lock: whoever opens $DATA_DIR/db holds it first — the
// server for its lifetime, a CLI command (answering "busy") while it works on the files itself.
import http from 'node:http'
import { chmod, mkdir, rm } from 'node:fs/promises'
import path from 'node:path'
import { StartupError } from '../errors.js'

export type ControlOperations = Record<string, (input: Record<string, unknown>) => Promise<unknown>>

export function controlSocketPath (dataDir: string): string {
  return path.join(dataDir, 'control.sock')
}

export class ControlUnavailable extends Error {}
/** A CLI command holds DATA_DIR for a moment; try again shortly. */
export class ControlBusy extends Error {}

const BUSY_WAIT_MS = 30_000
const sleep = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

/** Runs `attempt` again while DATA_DIR is held by a CLI command, for up to 30 s. */
export async function unlessBusy<T> (attempt: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + BUSY_WAIT_MS
  for (;;) {
    try {
      return await attempt()
    } catch (error) {
      if (!(error instanceof ControlBusy) || Date.now() > deadline) throw error
      await sleep(100)
    }
  }
}

/** Sends one operation to a running server; throws ControlUnavailable when none listens. */
export async function callControl (dataDir: string, operation: string, input: Record<string, unknown>): Promise<unknown> {
  const body = JSON.stringify(input)
  return await new Promise((resolve, reject) => {
    const request = http.request({ socketPath: controlSocketPath(dataDir), method: 'POST', path: `/${operation}`, headers: { 'content-type': 'application/json' } }, (response) => {
      const chunks: Buffer[] = []
      response.on('data', (chunk: Buffer) => chunks.push(chunk))
      response.on('end', () => {
        const answer = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as { result?: unknown, error?: string }
        if (response.statusCode === 200) resolve(answer.result)
        else if (response.statusCode === 503) reject(new ControlBusy('DATA_DIR is held by another shepherd command'))
        else reject(new Error(answer.error ?? `control request failed with status ${response.statusCode}`))
      })
    })
    request.on('error', (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ECONNREFUSED') reject(new ControlUnavailable('no running server'))
      else if (error.code === 'ECONNRESET') reject(new ControlBusy('the process holding DATA_DIR closed the connection')) // it is exiting: ask again
      else reject(error)
    })
    request.end(body)
  })
}

export interface ControlSocket {
  /** Starts answering requests with these operations; requests that came earlier wait for it. */
  serve (operations: ControlOperations): void
  close (): Promise<void>
}

/**
 * Claims $DATA_DIR for this process before the embedded database is opened: refuses when a server
 * answers there, waits while a CLI command holds it. A server's requests wait until `serve`
 * provides the operations; a CLI command's claim (`busy`) answers every request with 503.
 */
export async function startControlSocket (dataDir: string, options: { busy?: boolean } = {}): Promise<ControlSocket> {
  const socketPath = controlSocketPath(dataDir)
  try {
    await unlessBusy(() => callControl(dataDir, 'ping', {}))
    throw new StartupError(`another Shepherd server is running on DATA_DIR=${dataDir} (its embedded database admits one process); stop it or set DATA_DIR to another directory`)
  } catch (error) {
    if (error instanceof ControlBusy) throw new StartupError(`DATA_DIR=${dataDir} stayed held by another shepherd command for ${BUSY_WAIT_MS / 1000} s`)
    if (!(error instanceof ControlUnavailable)) throw error
  }
  await mkdir(dataDir, { recursive: true }) // a CLI command may be the first to use it
  await rm(socketPath, { force: true }) // left behind by a process that died
  let serve: (operations: ControlOperations) => void = () => {}
  const served = new Promise<ControlOperations>(resolve => { serve = resolve })
  const server = http.createServer((request, response) => {
    const chunks: Buffer[] = []
    request.on('data', (chunk: Buffer) => chunks.push(chunk))
    request.on('end', () => {
      const reply = (status: number, payload: unknown): void => {
        response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(payload))
      }
      const name = request.url?.slice(1) ?? ''
      if (options.busy === true) return reply(503, { error: 'busy' })
      if (name === 'ping') return reply(200, { result: 'pong' })
      void served.then((operations) => {
        const operation = Object.hasOwn(operations, name) ? operations[name] : undefined
        if (operation === undefined) return reply(404, { error: `unknown operation ${request.url}` })
        let input: Record<string, unknown>
        try {
          input = JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as Record<string, unknown>
        } catch {
          return reply(400, { error: 'request body is not JSON' })
        }
        operation(input).then(result => reply(200, { result }), (error: Error) => reply(500, { error: error.message }))
      })
    })
  })
  await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(socketPath, resolve) })
  await chmod(socketPath, 0o600)
  return {
    serve,
    async close () {
      await new Promise<void>(resolve => server.close(() => resolve()))
      await rm(socketPath, { force: true })
    }
  }
}
