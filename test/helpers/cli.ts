// Runs the real CLI (bin/shepherd) in a child process.
import { execFile, spawn, type ChildProcess } from 'node:child_process'
import type { Test } from 'tap'
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

/** `shepherd start` as its own process; answers it and its HTTP port once it listens. */
export async function spawnShepherdServer (t: Test, env: Record<string, string>): Promise<{ child: ChildProcess, httpPort: number, nodeId: string }> {
  const child = spawn(process.execPath, ['bin/shepherd', 'start'], {
    cwd: path.resolve(import.meta.dirname, '../..'),
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', HOST: '127.0.0.1', PORT: '0', MQTT_PORT: '0', LOG_LEVEL: 'info', ...env },
    stdio: ['ignore', 'pipe', 'pipe']
  })
  t.teardown(() => { if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL') })
  let stderr = ''
  child.stderr!.on('data', (chunk: Buffer) => { stderr += chunk.toString() })
  let buffered = ''
  return await new Promise((resolve, reject) => {
    const timer = setTimeout(() => { reject(new Error(`shepherd start did not listen within 90 s; stderr: ${stderr}`)) }, 90_000)
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`shepherd start exited with ${code}: ${stderr}`)) })
    child.stdout!.on('data', (chunk: Buffer) => {
      buffered += chunk.toString()
      for (const line of buffered.split('\n').slice(0, -1)) {
        if (!line.startsWith('{')) continue
        const entry = JSON.parse(line) as { msg?: string, http?: number, node_id?: string }
        if (entry.msg === 'Shepherd listening' && entry.http !== undefined && entry.node_id !== undefined) {
          clearTimeout(timer)
          resolve({ child, httpPort: entry.http, nodeId: entry.node_id })
        }
      }
      buffered = buffered.slice(buffered.lastIndexOf('\n') + 1)
    })
  })
}
