// The one place that reads the environment: contract §6 settings, parsed and validated once
// into a frozen, typed Config. Every problem is reported together, each with its variable name.
// Nothing else in the code base may read process.env.
import { hostname } from 'node:os'
import path from 'node:path'
import { ConfigError } from './errors.js'

export type LogLevel = 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent'

export interface Config {
  readonly production: boolean
  readonly dataDir: string
  readonly databaseUrl: string | undefined
  readonly redisUrl: string | undefined
  /** PEM of the Fleet CA when given inline (FLEET_CA_PEM). */
  readonly fleetCaPem: string | undefined
  readonly fleetCaPath: string
  /** True when neither FLEET_CA_PEM nor FLEET_CA_PATH was set: a development CA may be created. */
  readonly fleetCaDefaulted: boolean
  readonly host: string
  readonly port: number
  /** 0 turns the plain MQTT/TCP listener off. */
  readonly mqttPort: number
  readonly timestampToleranceSeconds: number
  readonly tlsCertPath: string | undefined
  readonly tlsKeyPath: string | undefined
  readonly logLevel: LogLevel
  readonly nodeName: string
  /** Largest MQTT packet accepted from a device once authenticated (bytes). */
  readonly mqttMaxPacketBytes: number
  /** A bearer token accepted on /metrics besides the API tokens (for a Prometheus scraper). */
  readonly metricsToken: string | undefined
  /** METRICS_HANDLERS: built-in handler names or module paths, in order. */
  readonly metricsHandlers: readonly string[]
  /** Oldest accepted recorded_at of a metric point, in seconds before now. */
  readonly metricsMaxAgeSeconds: number
  /** Metric points the pipeline queues before it holds publishers back (its high-water mark). */
  readonly metricsQueuePoints: number
  /** Most `shepherd_device_metric` series the prometheus handler keeps. */
  readonly metricsPrometheusMaxSeries: number
  /** Days the postgres handler keeps metric points; 0 keeps them forever. */
  readonly metricsRetentionDays: number
  /** Signs firmware download URLs; undefined: generated once and kept in DATA_DIR. */
  readonly secretKeyBase: string | undefined
  /** Base of firmware download URLs, without a trailing slash; undefined: http(s)://localhost:<bound port>. */
  readonly publicUrl: string | undefined
  readonly firmwareDir: string
  /** Largest firmware file accepted (bytes). */
  readonly firmwareMaxBytes: number
  /** How long a firmware download URL stays valid (seconds). */
  readonly firmwareUrlTtlSeconds: number
  /** An update that reports nothing for this long while downloading or applying fails with reason timeout (seconds). */
  readonly updateStageTimeoutSeconds: number
  /** A mosquitto_passwd file whose users log in as observers. */
  readonly mqttPasswordFile: string | undefined
}

export const BUILT_IN_METRICS_HANDLERS = ['logger', 'postgres', 'prometheus'] as const
export type BuiltInMetricsHandler = typeof BUILT_IN_METRICS_HANDLERS[number]

/** A METRICS_HANDLERS entry that names a module rather than a built-in handler. */
export function isMetricsHandlerPath (entry: string): boolean {
  return /[/\\]/.test(entry) || /\.[cm]?[jt]s$/.test(entry)
}

const LOG_LEVELS: readonly LogLevel[] = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']

type Env = Readonly<Record<string, string | undefined>>

export function loadConfig (env: Env = process.env, overrides: Partial<Config> = {}): Config {
  const problems: string[] = []
  const read = (name: string): string | undefined => {
    const value = env[name]
    return value === undefined || value.trim() === '' ? undefined : value.trim()
  }
  const integer = (name: string, fallback: number, min: number, max: number): number => {
    const raw = read(name)
    if (raw === undefined) return fallback
    const value = Number(raw)
    if (!/^\d+$/.test(raw) || !Number.isSafeInteger(value) || value < min || value > max) {
      problems.push(`${name} must be an integer from ${min} to ${max} (got ${JSON.stringify(raw)})`)
      return fallback
    }
    return value
  }
  const url = (name: string, protocols: readonly string[]): string | undefined => {
    const raw = read(name)
    if (raw === undefined) return undefined
    try {
      const parsed = new URL(raw)
      if (!protocols.includes(parsed.protocol)) {
        problems.push(`${name} must be a ${protocols.join(' or ')} URL (got ${parsed.protocol})`)
      }
    } catch {
      problems.push(`${name} is not a valid URL`)
    }
    return raw
  }

  const logLevel = (read('LOG_LEVEL') ?? 'info') as LogLevel
  if (!LOG_LEVELS.includes(logLevel)) {
    problems.push(`LOG_LEVEL must be one of ${LOG_LEVELS.join(', ')} (got ${JSON.stringify(logLevel)})`)
  }
  const tlsCertPath = read('TLS_CERT')
  const tlsKeyPath = read('TLS_KEY')
  if ((tlsCertPath === undefined) !== (tlsKeyPath === undefined)) {
    problems.push('TLS_CERT and TLS_KEY must be set together (one of them is missing)')
  }
  const metricsToken = read('METRICS_TOKEN')
  if (metricsToken !== undefined && !/^\S{16,}$/.test(metricsToken)) {
    problems.push('METRICS_TOKEN must be at least 16 characters without spaces (a bearer token)')
  }
  const metricsHandlers = (read('METRICS_HANDLERS') ?? 'logger,postgres').split(',').map(entry => entry.trim())
  for (const [i, entry] of metricsHandlers.entries()) {
    if (entry === '') problems.push('METRICS_HANDLERS has an empty entry (a comma list, e.g. "logger,postgres")')
    else if (metricsHandlers.indexOf(entry) !== i) problems.push(`METRICS_HANDLERS lists ${JSON.stringify(entry)} twice`)
    else if (!isMetricsHandlerPath(entry) && !(BUILT_IN_METRICS_HANDLERS as readonly string[]).includes(entry)) {
      problems.push(`METRICS_HANDLERS: unknown handler ${JSON.stringify(entry)} (built-in: ${BUILT_IN_METRICS_HANDLERS.join(', ')}; or a module path such as ./my-handler.js)`)
    }
  }
  const fleetCaPem = read('FLEET_CA_PEM')
  if (fleetCaPem !== undefined && !fleetCaPem.includes('-----BEGIN CERTIFICATE-----')) {
    problems.push('FLEET_CA_PEM must hold a PEM certificate (-----BEGIN CERTIFICATE-----)')
  }

  const secretKeyBase = read('SECRET_KEY_BASE')
  if (secretKeyBase !== undefined && secretKeyBase.length < 32) {
    problems.push('SECRET_KEY_BASE must be at least 32 characters (e.g. `openssl rand -hex 32`)')
  }
  const publicUrl = url('PUBLIC_URL', ['http:', 'https:'])?.replace(/\/+$/, '')
  const dataDir = path.resolve(read('DATA_DIR') ?? './data')
  const mqttPasswordFile = read('MQTT_PASSWORD_FILE')

  const config: Config = {
    production: read('NODE_ENV') === 'production',
    dataDir,
    databaseUrl: url('DATABASE_URL', ['postgres:', 'postgresql:']),
    redisUrl: url('REDIS_URL', ['redis:', 'rediss:']),
    fleetCaPem,
    fleetCaPath: path.resolve(read('FLEET_CA_PATH') ?? 'priv/ca/fleet_ca.pem'),
    fleetCaDefaulted: fleetCaPem === undefined && read('FLEET_CA_PATH') === undefined,
    host: read('HOST') ?? '0.0.0.0',
    port: integer('PORT', 4000, 0, 65535),
    mqttPort: integer('MQTT_PORT', 1883, 0, 65535),
    timestampToleranceSeconds: integer('TIMESTAMP_TOLERANCE', 60, 1, 86400),
    tlsCertPath: tlsCertPath && path.resolve(tlsCertPath),
    tlsKeyPath: tlsKeyPath && path.resolve(tlsKeyPath),
    logLevel,
    nodeName: read('NODE_NAME') ?? hostname(),
    mqttMaxPacketBytes: integer('MQTT_MAX_PACKET_SIZE', 256 * 1024, 1024, 16 * 1024 * 1024),
    metricsToken,
    metricsHandlers,
    metricsMaxAgeSeconds: integer('METRICS_MAX_AGE', 604_800, 1, 10 * 366 * 86_400),
    metricsQueuePoints: integer('METRICS_QUEUE_POINTS', 5_000, 1_000, 1_000_000),
    metricsPrometheusMaxSeries: integer('METRICS_PROMETHEUS_MAX_SERIES', 10_000, 1, 1_000_000),
    metricsRetentionDays: integer('METRICS_RETENTION_DAYS', 30, 0, 36_500),
    secretKeyBase,
    publicUrl,
    firmwareDir: path.resolve(read('FIRMWARE_DIR') ?? path.join(dataDir, 'firmware')),
    firmwareMaxBytes: integer('FIRMWARE_MAX_SIZE', 1024 ** 3, 1, 64 * 1024 ** 3),
    firmwareUrlTtlSeconds: integer('FIRMWARE_URL_TTL', 3600, 60, 7 * 86_400),
    updateStageTimeoutSeconds: integer('UPDATE_STAGE_TIMEOUT', 3600, 10, 7 * 86_400),
    mqttPasswordFile: mqttPasswordFile === undefined ? undefined : path.resolve(mqttPasswordFile),
    ...overrides
  }
  if (problems.length > 0) throw new ConfigError(problems)
  return Object.freeze(config)
}
