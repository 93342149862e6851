// Opens the database: PostgreSQL through pg when DATABASE_URL is set, otherwise the embedded
// PGlite in $DATA_DIR/db. The only module (with repos/ and migrate.ts) that knows knex.
import { mkdir } from 'node:fs/promises'
import path from 'node:path'
import knexFactory, { type Knex } from 'knex'
import ClientPgLite from 'knex-pglite'

export type DatabaseKind = 'postgres' | 'pglite'

export interface Database {
  readonly knex: Knex
  readonly kind: DatabaseKind
  /** Connection string for a dedicated LISTEN connection (PostgreSQL only). */
  readonly url: string | undefined
  close (): Promise<void>
}

export interface DatabaseSettings {
  databaseUrl: string | undefined
  dataDir: string
  /** PGlite in memory instead of $DATA_DIR/db (tests). */
  inMemory?: boolean
}

export async function openDatabase (settings: DatabaseSettings): Promise<Database> {
  if (settings.databaseUrl !== undefined) {
    const knex = knexFactory({ client: 'pg', connection: settings.databaseUrl, pool: { min: 0, max: 10 } })
    return { knex, kind: 'postgres', url: settings.databaseUrl, close: async () => { await knex.destroy() } }
  }
  let connection: { filename?: string } = {}
  if (settings.inMemory !== true) {
    const filename = path.join(settings.dataDir, 'db')
    await mkdir(filename, { recursive: true })
    connection = { filename }
  }
  const knex = knexFactory({ client: ClientPgLite, dialect: 'postgres', connection } as Knex.Config)
  return { knex, kind: 'pglite', url: undefined, close: async () => { await knex.destroy() } }
}
