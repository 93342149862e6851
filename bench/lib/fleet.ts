// Device identities for the benchmarks, made before the measured phase: a Fleet CA (written to a
// file for Shepherd's FLEET_CA_PATH) and identities signed by it, each key parsed once rather
// than per CONNECT.
import { createPrivateKey } from 'node:crypto'
import { writeFile } from 'node:fs/promises'
import path from 'node:path'
import { createFleetCa } from '../../src/certs/pki.js'
import { makeIdentity } from '../../src/device-client/fleet.js'
import type { DeviceIdentity } from '../../src/device-client/device-client.js'

export interface BenchFleet {
  caPath: string
  /** One list per requested group, serials `<prefix>-00001` and up. */
  groups: DeviceIdentity[][]
  elapsedMs: number
}

export async function makeBenchFleet (dir: string, groups: ReadonlyArray<{ prefix: string, count: number }>): Promise<BenchFleet> {
  const started = performance.now()
  const ca = await createFleetCa()
  const caPath = path.join(dir, 'fleet_ca.pem')
  await writeFile(caPath, ca.certificate.toString('pem'))
  const make = (prefix: string, count: number): Promise<DeviceIdentity[]> => Promise.all(Array.from({ length: count }, async (_, i) => {
    const identity = await makeIdentity(ca, `${prefix}-${String(i + 1).padStart(5, '0')}`)
    const key = identity.privateKey
    return { ...identity, privateKey: typeof key === 'string' ? createPrivateKey(key) : key }
  }))
  const made: DeviceIdentity[][] = []
  for (const { prefix, count } of groups) made.push(await make(prefix, count))
  return { caPath, groups: made, elapsedMs: performance.now() - started }
}
