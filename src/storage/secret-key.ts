// SECRET_KEY_BASE when it is not set: generated once and kept in $DATA_DIR (mode 0600), so that
// download URLs signed before a restart stay valid after it.
import { randomBytes } from 'node:crypto'
import { readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'

export const SECRET_KEY_FILE = 'secret_key_base'

export async function loadSecretKeyBase (configured: string | undefined, dataDir: string): Promise<string> {
  if (configured !== undefined) return configured
  const file = path.join(dataDir, SECRET_KEY_FILE)
  try {
    await writeFile(file, randomBytes(48).toString('base64url'), { flag: 'wx', mode: 0o600 })
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error
  }
  return (await readFile(file, 'utf8')).trim()
}
