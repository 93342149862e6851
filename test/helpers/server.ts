// Starts a real Shepherd on ephemeral ports for a test: its own DATA_DIR, its own Fleet CA, and
// either an in-memory PGlite or a fresh PostgreSQL database (created here, dropped at teardown).
import { randomUUID } from 'node:crypto'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import type { Test } from 'tap'
import { loadConfig } from '../../src/config.js'
import { createLogger } from '../../src/logger.js'
import { createServer, type ServerOptions, type ShepherdServer } from '../../src/server.js'
import { createTestPki, type TestPki } from './pki.js'
import { Writable } from 'node:stream'

export const POSTGRES_ADMIN_URL = process.env.TEST_POSTGRES_URL ?? 'postgres://postgres@127.0.0.1:5432/postgres'
export const REDIS_URL = process.env.TEST_REDIS_URL ?? 'redis://127.0.0.1:6379'

export type DatabaseChoice = 'pglite' | 'postgres'
export const DATABASES: readonly DatabaseChoice[] = ['pglite', 'postgres']
/**
 * The database of a test that does not choose one: PGlite, or PostgreSQL with TEST_DATABASE=postgres,
 * which runs the whole suite on the real server (tests that loop over DATABASES run on both anyway).
 */
export const DEFAULT_DATABASE: DatabaseChoice = process.env.TEST_DATABASE === 'postgres' ? 'postgres' : 'pglite'

export interface TestServer {
  server: ShepherdServer
  pki: TestPki
  wsUrl: string
  mqttUrl: string
  httpUrl: string
  dataDir: string
  databaseUrl: string | undefined
  /** A valid API token. */
  apiToken: string
  /** A REST call through Fastify's inject, with the test token unless `token` says otherwise (null: none). */
  api (method: ApiMethod, url: string, options?: { body?: unknown, token?: string | null, headers?: Record<string, string> }): Promise<ApiResponse>
  /** Every log line the server wrote, parsed. */
  logs: Array<Record<string, unknown>>
  close (): Promise<void>
}

export type ApiMethod = 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE'
export interface ApiResponse { status: number, body: any, headers: Record<string, unknown>, text: string } // eslint-disable-line @typescript-eslint/no-explicit-any

export interface TestServerOptions {
  database?: DatabaseChoice
  /** Reuse a database (a restart); otherwise a new one is made. */
  databaseUrl?: string
  dataDir?: string
  pki?: TestPki
  redis?: boolean
  env?: Record<string, string>
  heartbeatIntervalMs?: number
  sseHeartbeatMs?: number
  sysIntervalMs?: number
  mqttMaxBufferedBytes?: number
  observerRecheckMs?: number
  observerLoginLimit?: ServerOptions['observerLoginLimit']
  /** Keep the database after close (to restart on it). */
  keepDatabase?: boolean
}

export async function createTestDatabase (): Promise<{ url: string, drop (): Promise<void> }> {
  const name = `shepherd_test_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  const admin = new pg.Client({ connectionString: POSTGRES_ADMIN_URL })
  await admin.connect()
  await admin.query(`CREATE DATABASE ${name}`)
  await admin.end()
  const url = new URL(POSTGRES_ADMIN_URL)
  url.pathname = `/${name}`
  return {
    url: url.toString(),
    async drop () {
      const client = new pg.Client({ connectionString: POSTGRES_ADMIN_URL })
      await client.connect()
      await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`)
      await client.end()
    }
  }
}

export async function startTestServer (t: Test, options: TestServerOptions = {}): Promise<TestServer> {
  const pki = options.pki ?? await createTestPki()
  const dataDir = options.dataDir ?? await mkdtemp(path.join(tmpdir(), 'shepherd-test-'))
  const caPath = path.join(dataDir, 'fleet_ca.pem')
  await writeFile(caPath, pki.caPem)
  let database: { url: string, drop (): Promise<void> } | undefined
  let databaseUrl = options.databaseUrl
  if (databaseUrl === undefined && (options.database ?? DEFAULT_DATABASE) === 'postgres') {
    database = await createTestDatabase()
    databaseUrl = database.url
  }
  const logs: Array<Record<string, unknown>> = []
  const sink = new Writable({
    write (chunk: Buffer, _encoding, callback) {
      for (const line of chunk.toString('utf8').split('\n')) if (line !== '') logs.push(JSON.parse(line) as Record<string, unknown>)
      callback()
    }
  })
  const config = loadConfig({
    DATA_DIR: dataDir,
    FLEET_CA_PATH: caPath,
    HOST: '127.0.0.1',
    LOG_LEVEL: 'debug',
    ...(databaseUrl === undefined ? {} : { DATABASE_URL: databaseUrl }),
    ...(options.redis === true ? { REDIS_URL: REDIS_URL } : {}),
    ...options.env
  })
  const server = await createServer(config, {
    logger: createLogger('debug', sink),
    inMemoryDatabase: databaseUrl === undefined,
    heartbeatIntervalMs: options.heartbeatIntervalMs,
    sseHeartbeatMs: options.sseHeartbeatMs,
    sysIntervalMs: options.sysIntervalMs,
    mqttMaxBufferedBytes: options.mqttMaxBufferedBytes,
    observerRecheckMs: options.observerRecheckMs,
    observerLoginLimit: options.observerLoginLimit
  })
  const { httpPort, mqttPort } = await server.listen({ http: 0, mqtt: 0 })
  let closed = false
  const created = await server.tokens.create(`test-${randomUUID()}`) // unique: restarts and second nodes share the database
  if (!created.ok) throw new Error('could not create the test API token')
  const apiToken = created.token
  const testServer: TestServer = {
    server,
    apiToken,
    async api (method, url, { body, token, headers = {} } = {}) {
      const bearer = token === undefined ? apiToken : token
      const response = await server.http.inject({
        method,
        url,
        headers: {
          ...(bearer === null ? {} : { authorization: `Bearer ${bearer}` }),
          ...(typeof body === 'string' ? { 'content-type': 'application/json' } : {}), // raw text: malformed JSON tests
          ...headers
        },
        ...(body === undefined ? {} : { payload: body as string | object })
      })
      let parsed: unknown
      try { parsed = JSON.parse(response.body) } catch { parsed = undefined }
      return { status: response.statusCode, body: parsed, headers: response.headers, text: response.body }
    },
    pki,
    dataDir,
    databaseUrl,
    logs,
    wsUrl: `ws://127.0.0.1:${httpPort}/mqtt`,
    mqttUrl: `mqtt://127.0.0.1:${mqttPort}`,
    httpUrl: `http://127.0.0.1:${httpPort}`,
    async close () {
      if (closed) return
      closed = true
      await server.close()
      if (options.keepDatabase !== true) await database?.drop()
      if (options.dataDir === undefined) await rm(dataDir, { recursive: true, force: true })
    }
  }
  t.teardown(() => testServer.close())
  return testServer
}

/** Polls `check` until it returns a value other than undefined/false, or fails after `timeoutMs`. */
export async function eventually<T> (check: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 5000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    const value = await check()
    if (value !== undefined && value !== false) return value
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 25))
  }
}
