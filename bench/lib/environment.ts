// What the benchmarks need from the machine: enough file descriptors and ephemeral ports for N
// sockets on each side (warnings when short), a throwaway PostgreSQL database, and a description
// of the machine and how busy it is.
import { readdirSync, readFileSync } from 'node:fs'
import os from 'node:os'
import { execFileSync } from 'node:child_process'
import pg from 'pg'

export const POSTGRES_ADMIN_URL = 'postgres://postgres@127.0.0.1:5432/postgres'

/** Descriptors a process needs beyond its sockets: stdio, IPC, epoll, the listeners, libraries. */
const FD_HEADROOM = 256

/** The soft open-file limit of this process (inherited by the broker process), if known. */
export function openFileLimit (): number | undefined {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find(l => l.startsWith('Max open files'))
    const soft = line?.split(/\s{2,}/)[1]
    if (soft !== undefined) return soft === 'unlimited' ? Infinity : Number(soft)
  } catch {}
  try {
    const value = execFileSync('sh', ['-c', 'ulimit -n'], { encoding: 'utf8' }).trim()
    return value === 'unlimited' ? Infinity : Number(value)
  } catch {
    return undefined
  }
}

function ephemeralPorts (): number | undefined {
  try {
    const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number)
    return low === undefined || high === undefined ? undefined : high - low + 1
  } catch {
    return undefined
  }
}

/** Warnings for a run of `devices` connections (driver and broker in separate processes). */
export function resourceWarnings (devices: number): string[] {
  const warnings: string[] = []
  const limit = openFileLimit()
  const needed = devices + FD_HEADROOM
  if (limit === undefined) {
    warnings.push(`could not read the open-file limit; ${devices} devices need about ${needed} descriptors in each process`)
  } else if (limit < needed) {
    warnings.push(`open-file limit (ulimit -n) is ${limit}, but ${devices} devices need about ${needed} descriptors in the load ` +
      `generator and as many in the broker process (about ${2 * devices} if both sides shared one process); ` +
      'connections beyond the limit fail with EMFILE. Raise it first, e.g. `ulimit -n 65536` (a hard limit needs root).')
  }
  const ports = ephemeralPorts()
  if (ports !== undefined && ports < devices + 1000) {
    warnings.push(`only ${ports} ephemeral ports (net.ipv4.ip_local_port_range) for ${devices} connections from 127.0.0.1`)
  }
  return warnings
}

export interface ThrowawayDatabase { url: string, drop (): Promise<void> }

/** A fresh database on the local PostgreSQL, as test/helpers/server.ts makes them. */
export async function createThrowawayDatabase (): Promise<ThrowawayDatabase> {
  const name = `shepherd_bench_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
  const admin = async (sql: string): Promise<void> => {
    const client = new pg.Client({ connectionString: POSTGRES_ADMIN_URL })
    await client.connect()
    try { await client.query(sql) } finally { await client.end() }
  }
  await admin(`CREATE DATABASE ${name}`)
  const url = new URL(POSTGRES_ADMIN_URL)
  url.pathname = `/${name}`
  return { url: url.toString(), drop: () => admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`) }
}

export const loadAverage = (): string => os.loadavg().map(value => value.toFixed(2)).join(' / ')

export function machineDescription (): string {
  return `${os.availableParallelism()} cores (${os.cpus()[0]?.model.trim() ?? 'unknown CPU'}), node ${process.version}, ${os.platform()} ${os.release()}`
}

/** A warning when the 1-minute load average says other processes are busy, else undefined. */
export function busyMachineWarning (less: string): string | undefined {
  return os.loadavg()[0]! > os.availableParallelism() / 2
    ? `other processes are busy on this machine; throughput and latency figures will be noisy (${less} less so)`
    : undefined
}

/** Prints the load average and the warnings a run's figures depend on (`less`: the figure busy machines distort least). */
export function printMachineState (devices: number, less: string): void {
  console.log(`load average at the start (1/5/15 min): ${loadAverage()}`)
  const busy = busyMachineWarning(less)
  if (busy !== undefined) console.log(`WARNING: ${busy}`)
  for (const warning of resourceWarnings(devices)) console.log(`WARNING: ${warning}`)
}

/** Clock ticks per second of /proc/<pid>/stat's CPU fields (USER_HZ: 100 on Linux's supported architectures). */
const USER_HZ = 100

/** CPU ticks (user + system) of each PostgreSQL process now running on this machine, by pid; empty where /proc cannot tell. */
function postgresTicks (): Map<number, number> {
  const ticks = new Map<number, number>()
  let pids: string[]
  try { pids = readdirSync('/proc').filter(name => /^\d+$/.test(name)) } catch { return ticks }
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8')
      const close = stat.lastIndexOf(')')
      if (!stat.slice(stat.indexOf('(') + 1, close).startsWith('postgres')) continue
      const fields = stat.slice(close + 2).split(' ') // from field 3 (state) on
      ticks.set(Number(pid), Number(fields[11]) + Number(fields[12])) // utime, stime
    } catch {} // the process ended meanwhile
  }
  return ticks
}

/**
 * Measures the CPU the local PostgreSQL spends from now until the returned function is called
 * (µs): server and backends, those started meanwhile too; a backend that ended meanwhile is missed.
 */
export function startPostgresCpu (): () => number {
  const before = postgresTicks()
  return () => {
    let total = 0
    for (const [pid, ticks] of postgresTicks()) total += ticks - (before.get(pid) ?? 0)
    return total * 1_000_000 / USER_HZ
  }
}
