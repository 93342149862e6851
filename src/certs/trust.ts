// Checks device certificates against the Fleet CA with node:crypto. Parsing a certificate and
// verifying its chain's signatures is the expensive part of a connect, so that verdict for a given
// leaf and chain is cached (keyed by SHA-256 over each part with its length: unambiguous, so no
// other leaf and chain can share a real device's entry); validity dates of the certificate and of
// its intermediates are compared with the clock by the caller on every connect.
import { X509Certificate, createHash, verify as verifySignature, type KeyObject } from 'node:crypto'

export type CertificateCheck =
  | { ok: true, certificate: ParsedCertificate }
  | { ok: false, detail: string }

export interface ParsedCertificate {
  commonName: string | undefined
  publicKey: KeyObject
  /** SHA-256 of the leaf's DER, lowercase hex. */
  fingerprint: string
  // Validity times are epoch milliseconds, not Dates: one entry per device stays cached, and four
  // Date objects were a sixth of its heap.
  notBefore: number
  notAfter: number
  /** Why the chain does not lead to the Fleet CA; undefined when every link's signature verified. */
  chainError: string | undefined
  /** When the intermediates (if any) are all in date; compared with the clock on every connect. */
  chainNotBefore: number
  chainNotAfter: number
}

export interface FleetTrust {
  /** Parses the leaf and its intermediates and verifies every link (signature and dates) up to the Fleet CA. */
  checkCertificate (leafDer: Buffer, chainDer: readonly Buffer[]): CertificateCheck
  /** ECDSA/SHA-256 over `message`; DER or raw 64-byte r||s signatures. */
  verifySignature (certificate: ParsedCertificate, message: Buffer, signature: Buffer): boolean
  readonly caCertificate: X509Certificate
}

export function commonNameOf (certificate: X509Certificate): string | undefined {
  // node prints the subject as "key=value" lines; a CN appearing twice is ambiguous and refused
  const names = certificate.subject.split('\n').filter(line => line.startsWith('CN=')).map(line => line.slice(3))
  return names.length === 1 ? names[0] : undefined
}

/** node:crypto parses a certificate followed by anything; one DER certificate and nothing else is accepted. */
function parseExactly (der: Buffer, what: string): X509Certificate {
  const certificate = new X509Certificate(der)
  if (certificate.raw.length !== der.length) throw new Error(`${what} has ${der.length - certificate.raw.length} bytes after its DER encoding`)
  return certificate
}

function isIssuedBy (child: X509Certificate, issuer: X509Certificate): boolean {
  return child.checkIssued(issuer) && child.verify(issuer.publicKey)
}

export function createFleetTrust (caPem: string, options: { cacheSize?: number } = {}): FleetTrust {
  const ca = new X509Certificate(caPem)
  if (!ca.ca) throw new Error('the Fleet CA certificate is not a CA certificate (basicConstraints CA:TRUE missing)')
  const cacheSize = options.cacheSize ?? 100_000
  const cache = new Map<string, CertificateCheck>()

  function remember (key: string, check: CertificateCheck): CertificateCheck {
    if (cache.size >= cacheSize) cache.delete(cache.keys().next().value as string)
    cache.set(key, check)
    return check
  }

  /** The verdict on certificates that parsed (cached; input that does not parse is not, so junk cannot push real devices out). */
  function verdictOn (leaf: X509Certificate, intermediates: readonly X509Certificate[], leafDer: Buffer): CertificateCheck {
    const key = leaf.publicKey
    if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
      return { ok: false, detail: 'the certificate key is not an ECDSA P-256 key' }
    }
    return {
      ok: true,
      certificate: {
        commonName: commonNameOf(leaf),
        publicKey: key,
        fingerprint: createHash('sha256').update(leafDer).digest('hex'),
        notBefore: Date.parse(leaf.validFrom),
        notAfter: Date.parse(leaf.validTo),
        chainError: chainError([leaf, ...intermediates]),
        chainNotBefore: Math.max(0, ...intermediates.map(c => Date.parse(c.validFrom))),
        chainNotAfter: Math.min(8.64e15, ...intermediates.map(c => Date.parse(c.validTo)))
      }
    }
  }

  function chainError (links: readonly X509Certificate[]): string | undefined {
    for (let i = 0; i < links.length; i++) {
      const child = links[i]!
      const parent = links[i + 1] ?? ca
      const parentName = i + 1 < links.length ? `chain[${i}]` : 'the Fleet CA'
      if (!parent.ca) return `${parentName} is not a CA certificate`
      if (!isIssuedBy(child, parent)) return `${i === 0 ? 'the certificate' : `chain[${i - 1}]`} is not signed by ${parentName}`
    }
    return undefined
  }

  return {
    caCertificate: ca,
    checkCertificate (leafDer, chainDer) {
      const hash = createHash('sha256')
      for (const der of [leafDer, ...chainDer]) {
        const length = Buffer.allocUnsafe(4)
        length.writeUInt32BE(der.length)
        hash.update(length).update(der)
      }
      const key = hash.digest('base64')
      const cached = cache.get(key)
      if (cached !== undefined) return cached
      let leaf: X509Certificate
      let intermediates: X509Certificate[]
      try {
        leaf = parseExactly(leafDer, 'the certificate')
        intermediates = chainDer.map((der, i) => parseExactly(der, `chain[${i}]`))
      } catch (error) {
        return { ok: false, detail: `does not parse as X.509: ${(error as Error).message}` }
      }
      return remember(key, verdictOn(leaf, intermediates, leafDer))
    },
    verifySignature (certificate, message, signature) {
      const dsaEncoding = signature.length === 64 ? 'ieee-p1363' : 'der'
      try {
        return verifySignature('sha256', message, { key: certificate.publicKey, dsaEncoding }, signature)
      } catch {
        return false // malformed DER signature
      }
    }
  }
}
