// Finds the Fleet CA the server trusts: FLEET_CA_PEM, or the file at FLEET_CA_PATH. Outside
// production, a missing default CA is created (a development CA) so that a fresh clone starts.
import { readFile } from 'node:fs/promises'
import path from 'node:path'
import type { Config } from '../config.js'
import { StartupError } from '../errors.js'
import type { Logger } from '../logger.js'
import { createFleetCa, fleetCaExists, writeFleetCa } from './pki.js'

export async function loadFleetCaPem (config: Config, logger: Logger): Promise<string> {
  if (config.fleetCaPem !== undefined) return config.fleetCaPem
  try {
    return await readFile(config.fleetCaPath, 'utf8')
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw new StartupError(`cannot read FLEET_CA_PATH=${config.fleetCaPath}: ${(error as Error).message}`)
  }
  if (config.production || !config.fleetCaDefaulted) {
    throw new StartupError(`no Fleet CA at ${config.fleetCaPath}: set FLEET_CA_PEM (the CA certificate's PEM) or FLEET_CA_PATH (its file), or create one with "shepherd gen-ca"`)
  }
  const caDir = path.dirname(config.fleetCaPath)
  if (await fleetCaExists(caDir)) throw new StartupError(`${caDir} holds a Fleet CA key but no certificate; restore ${config.fleetCaPath} or remove the directory`)
  const ca = await createFleetCa()
  const { certPath, keyPath } = await writeFleetCa(caDir, ca)
  logger.warn({ certPath, keyPath }, `created a development Fleet CA in ${caDir} (NODE_ENV is not production); device certificates: shepherd gen-device-cert --serial <serial>`)
  return ca.certificate.toString('pem')
}
