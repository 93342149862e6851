// pino logger factory. Credentials never reach the log: the redact list covers the places where
// a password, signature or token could appear in a logged object.
import { pino, type Logger } from 'pino'
import type { LogLevel } from './config.js'

export type { Logger }

interface LoggedRequest { method?: string, url?: string, host?: string, ip?: string, socket?: { remotePort?: number } }

/** Fastify's request serializer, with the signature of a firmware download URL (the device's credential) taken out. */
function request (req: LoggedRequest): Record<string, unknown> {
  return {
    method: req.method,
    url: req.url?.replace(/([?&]signature=)[^&]*/g, '$1[redacted]'),
    host: req.host,
    remoteAddress: req.ip,
    remotePort: req.socket?.remotePort
  }
}

export function createLogger (level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino({
    level,
    base: { service: 'shepherd' },
    serializers: { req: request },
    redact: { paths: ['password', '*.password', 'signature', '*.signature', 'authorization', '*.authorization', 'token'], censor: '[redacted]' }
  }, destination)
}
