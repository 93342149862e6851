// pino logger factory. Credentials never reach the log: the redact list covers the places where
// a password, signature or token could appear in a logged object.
import { pino, type Logger } from 'pino'
import type { LogLevel } from './config.js'

export type { Logger }

export function createLogger (level: LogLevel, destination?: pino.DestinationStream): Logger {
  return pino({
    level,
    base: { service: 'shepherd' },
    redact: { paths: ['password', '*.password', 'signature', '*.signature', 'authorization', '*.authorization', 'token'], censor: '[redacted]' }
  }, destination)
}
