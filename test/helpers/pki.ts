// Test certificates, made with the project's own PKI module: a Fleet CA per test file and
// device identities signed by it (or by an intermediate, or by a stranger CA).
import { createFleetCa, issueCertificate, type Issuer } from '../../src/certs/pki.js'
import { makeIdentity } from '../../src/device-client/fleet.js'
import type { DeviceIdentity } from '../../src/device-client/device-client.js'

export interface TestPki {
  ca: Issuer
  caPem: string
  caKeyPem: string
  /** A device identity signed by the Fleet CA. */
  device (serial: string, options?: { days?: number, notBefore?: Date }): Promise<DeviceIdentity>
  /** A device identity signed by an intermediate CA that the Fleet CA signed; the chain is attached. */
  deviceViaIntermediate (serial: string): Promise<DeviceIdentity>
}

export async function createTestPki (): Promise<TestPki> {
  const fleet = await createFleetCa()
  const ca: Issuer = { certificate: fleet.certificate, privateKey: fleet.privateKey }
  return {
    ca,
    caPem: fleet.certificate.toString('pem'),
    caKeyPem: fleet.keyPem,
    device: async (serial, options) => await makeIdentity(ca, serial, options),
    async deviceViaIntermediate (serial) {
      const intermediate = await issueCertificate(ca, { commonName: 'Fleet Intermediate', intermediateCa: true, days: 365 })
      const identity = await makeIdentity({ certificate: intermediate.certificate, privateKey: intermediate.privateKey }, serial)
      return { ...identity, chain: [Buffer.from(intermediate.certificate.rawData)] }
    }
  }
}

let counter = 0
/** A serial unique to this process, so tests never collide on retained topics or rows. */
export function uniqueSerial (prefix = 'dev'): string {
  counter += 1
  return `${prefix}-${process.pid}-${counter}`
}
