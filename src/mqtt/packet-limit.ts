// Caps the size an MQTT packet may claim before Aedes buffers it: a client that has not
// authenticated could otherwise announce a 268 MB packet (the MQTT maximum) and make the server
// collect it. The check runs as soon as mqtt-packet has read the remaining-length field.

export class PacketTooLarge extends Error {
  constructor (readonly bytes: number, readonly limit: number) {
    super(`packet of ${bytes} bytes exceeds the limit of ${limit} bytes`)
  }
}

/** The parts of Aedes's per-client mqtt-packet parser this module relies on. */
interface PacketParser {
  packet: { length: number }
  _parseLength (): boolean
  _emitError (error: Error): void
}

export interface PacketLimits {
  /** Largest packet before the CONNECT has been accepted (the CONNECT itself). */
  beforeAuthentication: number
  afterAuthentication: number
}

interface LimitedClient {
  client: object
  limits: PacketLimits
  isAuthenticated (client: object): boolean
}

// The check is installed once on the parsers' prototype and finds each limited parser's client
// here: a wrapper per parser would cost every connection a closure and a grown property array.
const limited = new WeakMap<PacketParser, LimitedClient>()
const patched = Symbol('shepherd packet limit')

function patchPrototype (parser: PacketParser): void {
  const prototype = Object.getPrototypeOf(parser) as PacketParser & { [patched]?: true }
  if (prototype[patched] === true) return
  const parseLength = prototype._parseLength
  prototype._parseLength = function limitedParseLength (this: PacketParser): boolean {
    const complete = parseLength.call(this)
    const entry = limited.get(this)
    if (!complete || entry === undefined) return complete
    const limit = entry.isAuthenticated(entry.client) ? entry.limits.afterAuthentication : entry.limits.beforeAuthentication
    if (this.packet.length > limit) {
      this._emitError(new PacketTooLarge(this.packet.length, limit))
      return false
    }
    return true
  }
  prototype[patched] = true
}

export function limitPacketSize<C extends object> (client: C, limits: PacketLimits, isAuthenticated: (client: C) => boolean): void {
  const parser = (client as { _parser?: PacketParser })._parser
  if (parser === undefined || typeof parser._parseLength !== 'function') {
    throw new Error('aedes client has no mqtt-packet parser to limit; check the aedes version')
  }
  patchPrototype(parser)
  limited.set(parser, { client, limits, isAuthenticated })
}
