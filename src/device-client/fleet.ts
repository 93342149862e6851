// Makes device identities on the fly from a Fleet CA and connects many devices at once, with a
// bounded number of CONNECTs in flight. Shared by `shepherd simulate`, tests and benchmarks.
import { issueCertificate, type Issuer } from '../certs/pki.js'
import { connectDevice, type DeviceClient, type DeviceClientOptions, type DeviceIdentity } from './device-client.js'

export async function makeIdentity (ca: Issuer, serial: string, options: { days?: number, notBefore?: Date } = {}): Promise<DeviceIdentity> {
  const issued = await issueCertificate(ca, { commonName: serial, ...options })
  return { serial, certDer: Buffer.from(issued.certificate.rawData), privateKey: issued.keyPem }
}

/** Runs `task` over `items` with at most `concurrency` of them in flight. */
export async function forEachConcurrently<T> (items: readonly T[], concurrency: number, task: (item: T) => Promise<void>): Promise<void> {
  let next = 0
  const worker = async (): Promise<void> => {
    while (next < items.length) await task(items[next++]!)
  }
  await Promise.all(Array.from({ length: Math.min(concurrency, items.length) }, worker))
}

export interface FleetProgress { connected: number, refused: number, total: number }

export interface ConnectFleetResult {
  devices: DeviceClient[]
  refusals: Array<{ serial: string, error: Error }>
  /** CONNECT→CONNACK latency of each accepted device, ms. */
  latenciesMs: number[]
  elapsedMs: number
}

export async function connectFleet (
  identities: readonly DeviceIdentity[],
  options: Omit<DeviceClientOptions, 'identity'> & { concurrency?: number, onProgress?: (progress: FleetProgress) => void }
): Promise<ConnectFleetResult> {
  const result: ConnectFleetResult = { devices: [], refusals: [], latenciesMs: [], elapsedMs: 0 }
  const started = performance.now()
  await forEachConcurrently(identities, options.concurrency ?? 50, async (identity) => {
    const begun = performance.now()
    try {
      result.devices.push(await connectDevice({ ...options, identity }))
      result.latenciesMs.push(performance.now() - begun)
    } catch (error) {
      result.refusals.push({ serial: identity.serial, error: error as Error })
    }
    options.onProgress?.({ connected: result.devices.length, refused: result.refusals.length, total: identities.length })
  })
  result.elapsedMs = performance.now() - started
  return result
}
