// Shepherd's version, from package.json (the OpenAPI document and $SYS/broker/version show it).
import { readFileSync } from 'node:fs'

export const VERSION = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version
