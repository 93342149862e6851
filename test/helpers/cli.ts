// Runs the real CLI (bin/shepherd) in a child process.
import { execFile } from 'node:child_process'
import path from 'node:path'

export const SHEPHERD_BIN = path.resolve(import.meta.dirname, '../../bin/shepherd')

export interface CliResult { code: number, stdout: string, stderr: string }

export async function runShepherd (args: string[], options: { cwd?: string, env?: Record<string, string | undefined> } = {}): Promise<CliResult> {
  // a clean environment: tap's loaders and settings are for test files, the CLI runs as users run it
  const env: Record<string, string | undefined> = { PATH: process.env.PATH, HOME: process.env.HOME, LOG_LEVEL: 'warn', ...options.env }
  for (const key of Object.keys(env)) if (env[key] === undefined) delete env[key]
  return await new Promise((resolve) => {
    execFile(process.execPath, [SHEPHERD_BIN, ...args], { cwd: options.cwd, env, timeout: 60_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1
      resolve({ code, stdout, stderr })
    })
  })
}
