// The ordered list of migrations, imported statically so they run the same under tsx, tap and a
// bundled build (knex's directory scan would need a TypeScript-aware loader at run time).
import type { Knex } from 'knex'
import * as groups from './20261203000001_groups.js'
import * as devices from './20261203000002_devices.js'
import * as apiTokens from './20261203000003_api_tokens.js'
import * as metricPoints from './20261203000004_metric_points.js'
import * as commands from './20261204000005_commands.js'
import * as firmware from './20261204000006_firmware.js'
import * as observers from './20261204000007_observers.js'
import * as metricPointsLeanIndexes from './20261204000008_metric_points_lean_indexes.js'

export const migrations: ReadonlyArray<readonly [string, Knex.Migration]> = [
  ['20261203000001_groups', groups],
  ['20261203000002_devices', devices],
  ['20261203000003_api_tokens', apiTokens],
  ['20261203000004_metric_points', metricPoints],
  ['20261204000005_commands', commands],
  ['20261204000006_firmware', firmware],
  ['20261204000007_observers', observers],
  ['20261204000008_metric_points_lean_indexes', metricPointsLeanIndexes]
]
