// METRICS_HANDLERS and the other metrics settings: defaults, validation naming the variable, and
// start-up errors for handler modules that cannot be loaded or made.
import t from 'tap'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import { loadConfig } from '../../src/config.js'
import { ConfigError, StartupError } from '../../src/errors.js'
import { createLogger } from '../../src/logger.js'
import { createMetricsHandlers } from '../../src/metrics/handlers/index.js'
import type { MetricsHandlerContext } from '../../src/metrics/handlers/context.js'
import { Registry } from 'prom-client'
import { startTestServer } from '../helpers/server.js'

t.test('defaults', async (t) => {
  t.match(loadConfig({}), {
    metricsHandlers: ['logger', 'postgres'], metricsMaxAgeSeconds: 604_800, metricsQueuePoints: 5_000, metricsPrometheusMaxSeries: 10_000
  })
  t.match(loadConfig({ METRICS_HANDLERS: ' prometheus , ./handlers/mine.js,/abs/x.mjs ', METRICS_MAX_AGE: '3600', METRICS_QUEUE_POINTS: '5000', METRICS_PROMETHEUS_MAX_SERIES: '10' }), {
    metricsHandlers: ['prometheus', './handlers/mine.js', '/abs/x.mjs'], metricsMaxAgeSeconds: 3600, metricsQueuePoints: 5000, metricsPrometheusMaxSeries: 10
  })
})

t.test('invalid settings are reported, each naming its variable', async (t) => {
  const error = t.throws(() => loadConfig({
    METRICS_HANDLERS: 'logger,influx,,logger', METRICS_MAX_AGE: '0', METRICS_QUEUE_POINTS: '10', METRICS_PROMETHEUS_MAX_SERIES: 'many'
  })) as unknown as ConfigError
  t.type(error, ConfigError)
  t.match(error.problems, [
    /^METRICS_HANDLERS: unknown handler "influx" \(built-in: logger, postgres, prometheus; or a module path/,
    /^METRICS_HANDLERS has an empty entry/,
    /^METRICS_HANDLERS lists "logger" twice/,
    /^METRICS_MAX_AGE must be an integer/,
    /^METRICS_QUEUE_POINTS must be an integer from 1000/,
    /^METRICS_PROMETHEUS_MAX_SERIES must be an integer/
  ])
})

t.test('an unknown handler name stops the server start naming METRICS_HANDLERS', async (t) => {
  await t.rejects(startTestServer(t, { env: { METRICS_HANDLERS: 'logger,nope' } }), { name: 'ConfigError', message: /METRICS_HANDLERS: unknown handler "nope"/ })
})

t.test('handler modules that cannot be used are start-up errors naming METRICS_HANDLERS', async (t) => {
  const dir = await mkdtemp(path.join(tmpdir(), 'shepherd-handlers-'))
  const write = async (name: string, text: string): Promise<string> => {
    await writeFile(path.join(dir, name), text)
    return name
  }
  const context: MetricsHandlerContext = { logger: createLogger('silent'), registry: new Registry(), knex: {} as MetricsHandlerContext['knex'], dataDir: dir }
  const make = (entries: string[]): ReturnType<typeof createMetricsHandlers> =>
    createMetricsHandlers({ metricsHandlers: entries, metricsPrometheusMaxSeries: 10, metricsRetentionDays: 30 }, context, dir)

  const cases: Array<[string, string, RegExp]> = [
    ['missing file', './missing.mjs', /^METRICS_HANDLERS: cannot load the handler module .*missing\.mjs/],
    ['syntax error', await write('broken.mjs', 'export default function ('), /^METRICS_HANDLERS: cannot load the handler module .*broken\.mjs/],
    ['no default export', await write('nodefault.mjs', 'export const x = 1'), /^METRICS_HANDLERS: the module .*nodefault\.mjs has no default export/],
    ['factory throws', await write('throws.mjs', 'export default () => { throw new Error("no database") }'), /^METRICS_HANDLERS: the handler ".\/throws\.mjs" failed to start: no database/],
    ['not a handler', await write('nothandler.mjs', 'export default () => ({ name: "x" })'), /^METRICS_HANDLERS: ".\/nothandler\.mjs" did not make a handler/],
    ['a built-in\'s name', await write('impostor.mjs', 'export default () => ({ name: "logger", handle: async () => {} })'), /^METRICS_HANDLERS: two handlers are named "logger"/]
  ]
  for (const [what, entry, message] of cases) {
    await t.rejects(make(['logger', entry.startsWith('./') ? entry : `./${entry}`]), { name: 'StartupError', message }, what)
  }
  await t.rejects(make(['influx']), StartupError, 'an unknown name (config overridden) is refused here too')

  // handlers made before the one that fails are closed
  await write('closes.mjs', 'export default () => ({ name: "c", handle: async () => {}, close: async () => { globalThis.__shepherdClosed = true } })')
  await t.rejects(make(['./closes.mjs', './throws.mjs']), StartupError)
  t.equal((globalThis as { __shepherdClosed?: boolean }).__shepherdClosed, true, 'the first handler was closed')

  const made = await make(['logger', 'prometheus', path.join(dir, 'closes.mjs')])
  t.same(made.map(h => [h.name, h.lossy === true]), [['logger', true], ['prometheus', true], ['c', false]], 'built-ins and an absolute module path')
})

t.test('shepherd start with a bad handler module fails naming the setting', async (t) => {
  const error = await t.rejects(startTestServer(t, { env: { METRICS_HANDLERS: '/nonexistent/handler.mjs' } }))
  t.match(error, { name: 'StartupError', message: /^METRICS_HANDLERS: cannot load the handler module \/nonexistent\/handler\.mjs/ })
})
