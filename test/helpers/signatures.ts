// ECDSA signature malleability for replay tests: (r, s) and (r, n − s) both verify, so replay
// protection must not key on signature bytes. DER goes through @peculiar/asn1-ecc.
import { AsnConvert } from '@peculiar/asn1-schema'
import { ECDSASigValue } from '@peculiar/asn1-ecc'

/** The order of the P-256 group. */
export const P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551n

const toBigInt = (bytes: ArrayBuffer | Uint8Array): bigint => BigInt(`0x${Buffer.from(bytes as ArrayBuffer).toString('hex') || '0'}`)

function toBytes (value: bigint, width: number): Buffer {
  return Buffer.from(value.toString(16).padStart(width * 2, '0'), 'hex')
}

/** (r, s) → (r, n − s), in the encoding it came in: DER, or raw 64-byte r||s (P1363). */
export function malleate (signature: Buffer): Buffer {
  if (signature.length === 64) {
    return Buffer.concat([signature.subarray(0, 32), toBytes(P256_N - toBigInt(signature.subarray(32)), 32)])
  }
  const value = AsnConvert.parse(signature, ECDSASigValue)
  const s = P256_N - toBigInt(value.s)
  // DER INTEGERs are minimal and signed: no leading zeros, but one 0x00 before a high first bit
  const padded = toBytes(s, 32)
  const minimal = padded.subarray(padded.findIndex(b => b !== 0))
  value.s = new Uint8Array(minimal[0]! >= 0x80 ? Buffer.concat([Buffer.from([0]), minimal]) : minimal).buffer
  return Buffer.from(AsnConvert.serialize(value))
}
