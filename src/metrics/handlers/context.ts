// What a metrics handler factory is given: the server's own facilities, the database among them
// (handlers are edges; the pipeline and its types know nothing of knex or prom-client).
import type { Registry } from 'prom-client'
import type { Knex } from 'knex'
import type { Logger } from '../../logger.js'
import type { MetricsHandler } from '../types.js'

/** What a handler factory gets: the server's own facilities. */
export interface MetricsHandlerContext {
  logger: Logger
  /** The prom-client registry served on /metrics. */
  registry: Registry
  knex: Knex
  dataDir: string
}

/** A built-in handler, or the default export of a custom handler module. */
export type MetricsHandlerFactory = (context: MetricsHandlerContext) => MetricsHandler | Promise<MetricsHandler>
