// Caps the size an MQTT packet may claim before Aedes buffers it: a client that has not
// authenticated could otherwise announce a 268 MB packet (the MQTT maximum) and make the server
// collect it. The check runs as soon as mqtt-packet has read the remaining-length field.

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

export function limitPacketSize (client: object, limits: PacketLimits, isAuthenticated: () => boolean): void {
  const parser = (client as { _parser?: PacketParser })._parser
  if (parser === undefined || typeof parser._parseLength !== 'function') {
    throw new Error('aedes client has no mqtt-packet parser to limit; check the aedes version')
  }
  const parseLength = parser._parseLength
  parser._parseLength = function limitedParseLength (this: PacketParser): boolean {
    const complete = parseLength.call(this)
    if (!complete) return false
    const limit = isAuthenticated() ? limits.afterAuthentication : limits.beforeAuthentication
    if (this.packet.length > limit) {
      this._emitError(new Error(`packet of ${this.packet.length} bytes exceeds the limit of ${limit} bytes`))
      return false
    }
    return true
  }
}
