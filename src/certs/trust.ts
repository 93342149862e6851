// Checks device certificates against the Fleet CA with node:crypto. Parsing a certificate and
// verifying its chain's signatures is the expensive part of a connect, so that verdict for a given
// leaf and chain is cached (keyed by SHA-256 over each part with its length: unambiguous, so no
// other leaf and chain can share a real device's entry); validity dates of the certificate and of
// its intermediates are compared with the clock by the caller on every connect.
//
// A verdict keeps the leaf's public key as its JWK coordinates (~0.2 KiB), not as a KeyObject:
// OpenSSL holds ~3 KiB of native memory per EC key, 3 MiB per 1,000 devices, a sixth of a
// connected device's whole footprint. Parsed keys live in a smaller LRU instead; a device whose
// key fell out of it pays one key parse (~80 µs here) on its next connect.
import { X509Certificate, createHash, createPublicKey, verify as verifySignature, type KeyObject } from 'node:crypto'

export type CertificateCheck =
  | { ok: true, certificate: ParsedCertificate }
  | { ok: false, detail: string }

export interface ParsedCertificate {
  commonName: string | undefined
  /** The leaf's P-256 public key as JWK coordinates (base64url). */
  publicKey: { x: string, y: string }
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

export interface FleetTrustOptions {
  /** Verdicts kept (oldest first out). Default 100,000. */
  cacheSize?: number
  /** Parsed public keys kept (least recently used out). Default 4,096 (~12 MiB). */
  keyCacheSize?: number
}

/** Sets `key` in a Map used as a bounded cache, dropping its oldest entry when full. */
function putBounded<K, V> (map: Map<K, V>, limit: number, key: K, value: V): V {
  if (map.size >= limit) map.delete(map.keys().next().value as K)
  map.set(key, value)
  return value
}

export function createFleetTrust (caPem: string, options: FleetTrustOptions = {}): FleetTrust {
  const ca = new X509Certificate(caPem)
  if (!ca.ca) throw new Error('the Fleet CA certificate is not a CA certificate (basicConstraints CA:TRUE missing)')
  const cacheSize = options.cacheSize ?? 100_000
  const keyCacheSize = options.keyCacheSize ?? 4096
  const cache = new Map<string, CertificateCheck>()
  /** By leaf fingerprint; re-inserted on use, so the first entry is the least recently used. */
  const keys = new Map<string, KeyObject>()

  function keyOf (certificate: ParsedCertificate): KeyObject {
    let key = keys.get(certificate.fingerprint)
    if (key === undefined) {
      key = createPublicKey({ key: { kty: 'EC', crv: 'P-256', ...certificate.publicKey }, format: 'jwk' })
    } else {
      keys.delete(certificate.fingerprint)
    }
    return putBounded(keys, keyCacheSize, certificate.fingerprint, key)
  }

  /** The verdict on certificates that parsed (cached; input that does not parse is not, so junk cannot push real devices out). */
  function verdictOn (leaf: X509Certificate, intermediates: readonly X509Certificate[], leafDer: Buffer): CertificateCheck {
    const key = leaf.publicKey
    if (key.asymmetricKeyType !== 'ec' || key.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
      return { ok: false, detail: 'the certificate key is not an ECDSA P-256 key' }
    }
    const { x, y } = key.export({ format: 'jwk' })
    const fingerprint = createHash('sha256').update(leafDer).digest('hex')
    const untrusted = chainError([leaf, ...intermediates])
    // parsed already, so the first connect need not parse it again; only keys of trusted certificates, so foreign ones cannot push them out
    if (untrusted === undefined) putBounded(keys, keyCacheSize, fingerprint, key)
    return {
      ok: true,
      certificate: {
        commonName: commonNameOf(leaf),
        publicKey: { x: x!, y: y! },
        fingerprint,
        notBefore: Date.parse(leaf.validFrom),
        notAfter: Date.parse(leaf.validTo),
        chainError: untrusted,
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
      return putBounded(cache, cacheSize, key, verdictOn(leaf, intermediates, leafDer))
    },
    verifySignature (certificate, message, signature) {
      const dsaEncoding = signature.length === 64 ? 'ieee-p1363' : 'der'
      try {
        return verifySignature('sha256', message, { key: keyOf(certificate), dsaEncoding }, signature)
      } catch {
        return false // malformed DER signature
      }
    }
  }
}
