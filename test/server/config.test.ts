import t from 'tap'
import path from 'node:path'
import { loadConfig } from '../../src/config.js'
import { ConfigError } from '../../src/errors.js'

t.test('defaults follow contract §6', async (t) => {
  const config = loadConfig({})
  t.equal(config.port, 4000)
  t.equal(config.host, '0.0.0.0')
  t.equal(config.mqttPort, 1883)
  t.equal(config.timestampToleranceSeconds, 60)
  t.equal(config.dataDir, path.resolve('data'))
  t.equal(config.fleetCaPath, path.resolve('priv/ca/fleet_ca.pem'))
  t.equal(config.fleetCaDefaulted, true)
  t.equal(config.databaseUrl, undefined)
  t.equal(config.redisUrl, undefined)
  t.equal(config.logLevel, 'info')
  t.equal(config.production, false)
  t.ok(Object.isFrozen(config))
})

t.test('settings are parsed', async (t) => {
  const config = loadConfig({
    PORT: '8080', HOST: '127.0.0.1', MQTT_PORT: '0', TIMESTAMP_TOLERANCE: '30', DATA_DIR: '/var/lib/shepherd',
    DATABASE_URL: 'postgres://u@db/shepherd', REDIS_URL: 'redis://cache:6379', FLEET_CA_PATH: '/etc/ca.pem',
    LOG_LEVEL: 'debug', NODE_ENV: 'production', TLS_CERT: '/etc/c.pem', TLS_KEY: '/etc/k.pem'
  })
  t.match(config, {
    port: 8080, host: '127.0.0.1', mqttPort: 0, timestampToleranceSeconds: 30, dataDir: '/var/lib/shepherd',
    databaseUrl: 'postgres://u@db/shepherd', redisUrl: 'redis://cache:6379', fleetCaPath: '/etc/ca.pem', fleetCaDefaulted: false,
    logLevel: 'debug', production: true, tlsCertPath: '/etc/c.pem', tlsKeyPath: '/etc/k.pem'
  })
})

t.test('every problem is reported at once, each naming its variable', async (t) => {
  const error = await t.throws(() => loadConfig({
    PORT: 'eighty', MQTT_PORT: '70000', TIMESTAMP_TOLERANCE: '-5', DATABASE_URL: 'mysql://x', REDIS_URL: 'not a url',
    LOG_LEVEL: 'loud', TLS_CERT: '/etc/c.pem', FLEET_CA_PEM: 'garbage'
  })) as unknown as ConfigError
  t.type(error, ConfigError)
  for (const name of ['PORT', 'MQTT_PORT', 'TIMESTAMP_TOLERANCE', 'DATABASE_URL', 'REDIS_URL', 'LOG_LEVEL', 'TLS_CERT and TLS_KEY', 'FLEET_CA_PEM']) {
    t.ok(error.problems.some(problem => problem.startsWith(name)), `names ${name}`)
  }
  t.equal(error.problems.length, 8)
})
