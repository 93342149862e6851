// The Fleet trust's caches: verdicts keep the key as JWK coordinates and parsed keys live in a
// bounded LRU, so a device whose parsed key was evicted is still verified with its own key.
import t from 'tap'
import { X509Certificate, createPrivateKey, sign } from 'node:crypto'
import { createFleetTrust, type ParsedCertificate } from '../../src/certs/trust.js'
import { createTestPki, uniqueSerial } from '../helpers/pki.js'

const pki = await createTestPki()

t.test('signatures verify with each certificate\'s own key after its parsed key left the LRU', async (t) => {
  const trust = createFleetTrust(pki.caPem, { keyCacheSize: 1 })
  const devices = await Promise.all([pki.device(uniqueSerial()), pki.device(uniqueSerial())])
  const certificates = devices.map(device => {
    const check = trust.checkCertificate(device.certDer, [])
    if (!check.ok) throw new Error(check.detail)
    return check.certificate
  })
  const signed = (index: number, message: Buffer): Buffer => sign('sha256', message, typeof devices[index]!.privateKey === 'string' ? createPrivateKey(devices[index]!.privateKey) : devices[index]!.privateKey)
  const verifies = (certificate: ParsedCertificate, message: Buffer, signature: Buffer): boolean => trust.verifySignature(certificate, message, signature)

  const [first, second] = certificates as [ParsedCertificate, ParsedCertificate]
  t.same({ kty: 'EC', crv: 'P-256', ...first.publicKey }, new X509Certificate(devices[0]!.certDer).publicKey.export({ format: 'jwk' }),
    'the verdict holds the leaf key as JWK coordinates')
  for (let round = 0; round < 3; round++) { // each call evicts the other device's parsed key
    const message = Buffer.from(`round ${round}`)
    t.ok(verifies(first, message, signed(0, message)), `round ${round}: the first device's signature verifies`)
    t.ok(verifies(second, message, signed(1, message)), `round ${round}: the second device's signature verifies`)
    t.notOk(verifies(first, message, signed(1, message)), `round ${round}: the second device's signature does not verify as the first's`)
    t.notOk(verifies(second, message, signed(0, message)), `round ${round}: the first device's signature does not verify as the second's`)
  }
  const again = trust.checkCertificate(devices[0]!.certDer, [])
  t.equal(again, trust.checkCertificate(devices[0]!.certDer, []), 'the verdict itself stays cached')
})
