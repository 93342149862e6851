// METRICS_HANDLERS → handler instances: built-in names, or module paths (relative to the working
// directory, or absolute) whose default export is a MetricsHandlerFactory. Anything that cannot
// be made into a handler stops the start with an error naming the setting.
import path from 'node:path'
import { pathToFileURL } from 'node:url'
import { isMetricsHandlerPath, type BuiltInMetricsHandler, type Config } from '../../config.js'
import { StartupError } from '../../errors.js'
import type { MetricsHandler } from '../types.js'
import type { MetricsHandlerContext, MetricsHandlerFactory } from './context.js'
import { createLoggerHandler } from './logger.js'
import { createPostgresHandler } from './postgres.js'
import { prometheusHandler } from './prometheus.js'

type HandlerSettings = Pick<Config, 'metricsHandlers' | 'metricsPrometheusMaxSeries' | 'metricsRetentionDays'>

const messageOf = (error: unknown): string => error instanceof Error ? error.message : String(error)

async function loadModule (entry: string, cwd: string): Promise<MetricsHandlerFactory> {
  const file = path.resolve(cwd, entry)
  let loaded: { default?: unknown }
  try {
    loaded = await import(pathToFileURL(file).href) as { default?: unknown }
  } catch (error) {
    throw new StartupError(`METRICS_HANDLERS: cannot load the handler module ${file}: ${messageOf(error)}`, { cause: error })
  }
  if (typeof loaded.default !== 'function') {
    throw new StartupError(`METRICS_HANDLERS: the module ${file} has no default export that is a handler factory (a function)`)
  }
  return loaded.default as MetricsHandlerFactory
}

export async function createMetricsHandlers (settings: HandlerSettings, context: MetricsHandlerContext, cwd = process.cwd()): Promise<MetricsHandler[]> {
  const builtIns: Record<BuiltInMetricsHandler, MetricsHandlerFactory> = {
    logger: createLoggerHandler,
    postgres: (context) => createPostgresHandler(context, { retentionDays: settings.metricsRetentionDays }),
    prometheus: prometheusHandler(settings.metricsPrometheusMaxSeries)
  }
  const handlers: MetricsHandler[] = []
  try {
    for (const entry of settings.metricsHandlers) {
      const factory = isMetricsHandlerPath(entry)
        ? await loadModule(entry, cwd)
        : Object.hasOwn(builtIns, entry) ? builtIns[entry as BuiltInMetricsHandler] : undefined
      if (factory === undefined) throw new StartupError(`METRICS_HANDLERS: unknown handler ${JSON.stringify(entry)}`)
      let handler: MetricsHandler
      try {
        handler = await factory(context)
      } catch (error) {
        throw new StartupError(`METRICS_HANDLERS: the handler ${JSON.stringify(entry)} failed to start: ${messageOf(error)}`, { cause: error })
      }
      if (typeof handler?.name !== 'string' || typeof handler.handle !== 'function') {
        throw new StartupError(`METRICS_HANDLERS: ${JSON.stringify(entry)} did not make a handler (an object with a name and a handle function)`)
      }
      handlers.push(handler)
      // the name labels the handler's figures and log lines: two of a name would be counted as one
      if (handlers.some(other => other !== handler && other.name === handler.name)) {
        throw new StartupError(`METRICS_HANDLERS: two handlers are named ${JSON.stringify(handler.name)} (the second from ${JSON.stringify(entry)}); a handler's name must be its own`)
      }
    }
  } catch (error) {
    await Promise.allSettled(handlers.map(async handler => { await handler.close?.() }))
    throw error
  }
  return handlers
}
