// MQTT_PASSWORD_FILE: read at start (a file that cannot be read stops the start, naming the
// setting), then read again when it changes (polled, so an editor that replaces the file is seen
// too) or on `reload()` (SIGHUP). A file that cannot be read later has no users, as with
// Mosquitto: deleting it shuts its users out. `onRead` runs after every read again.
import { readFile } from 'node:fs/promises'
import { unwatchFile, watchFile } from 'node:fs'
import { StartupError } from '../errors.js'
import type { Logger } from '../logger.js'
import { parsePasswordFile, type PasswordFile } from '../observers/passwd-file.js'

const POLL_MS = 1000

export interface WatchedPasswordFile {
  current (): PasswordFile
  reload (): Promise<void>
  close (): void
}

export async function openPasswordFile (file: string, logger: Logger, onRead: () => void = () => {}): Promise<WatchedPasswordFile> {
  const read = async (): Promise<PasswordFile> => {
    const parsed = parsePasswordFile(await readFile(file, 'utf8'))
    for (const problem of parsed.problems) logger.warn({ file, problem }, 'MQTT_PASSWORD_FILE: a line was left out')
    return parsed
  }
  let current: PasswordFile
  try {
    current = await read()
  } catch (error) {
    throw new StartupError(`MQTT_PASSWORD_FILE=${file} cannot be read: ${(error as Error).message}`)
  }
  logger.info({ file, users: current.users.size }, 'observer password file read')

  const reload = async (): Promise<void> => {
    try {
      current = await read()
      logger.info({ file, users: current.users.size }, 'observer password file read again')
    } catch (error) {
      current = { users: new Map(), problems: [] }
      logger.error({ file, err: error }, 'MQTT_PASSWORD_FILE cannot be read: none of its users can log in until it can')
    }
    onRead()
  }
  const onChange = (): void => { void reload() }
  watchFile(file, { interval: POLL_MS, persistent: false }, onChange)
  return {
    current: () => current,
    reload,
    close: () => { unwatchFile(file, onChange) }
  }
}
