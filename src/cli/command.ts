// `shepherd command SERIAL ping|identify|reboot [--wait] [--timeout S] [--ttl S] [--echo TEXT]`:
// issues a command as the REST API does and, with --wait, prints the device's answer. On the
// embedded database the running server issues it (control socket); on PostgreSQL the CLI stores
// it and the node holding the device delivers it (NOTIFY).
import { setTimeout as sleep } from 'node:timers/promises'
import { loadConfig, type Config } from '../config.js'
import { createCommands, type IssueResult } from '../commands/commands.js'
import type { CommandRequest } from '../commands/command-request.js'
import type { Command } from '../commands/types.js'
import { discardEvents } from '../events/events.js'
import { CommandError, UsageError } from '../errors.js'
import { createLogger } from '../logger.js'
import type { Database } from '../storage/db.js'
import { createNodeAnnouncer } from '../storage/node-channel.js'
import { createCommandRepository } from '../storage/repos/commands-repo.js'
import { createDeviceRepository } from '../storage/repos/devices-repo.js'
import { isValidSerial } from '../topics.js'
import { parseCommand, type Output } from './main.js'
import { viaServerOrDatabase } from './via-server.js'

const COMMANDS = ['ping', 'identify', 'reboot'] as const
const POLL_MS = 250

/** A command as the CLI gets it: dates are strings when they come over the control socket. */
type Answer = Omit<Command, 'issued_at' | 'expires_at' | 'sent_at' | 'completed_at'>

function commandsOn (db: Database) {
  const devices = createDeviceRepository(db.knex)
  return createCommands({
    repo: createCommandRepository(db.knex),
    findDevice: serial => devices.find(serial),
    groupMembers: async () => undefined,
    announceQueued: serials => createNodeAnnouncer(db).announceCommandQueued(serials),
    events: discardEvents,
    logger: createLogger('silent')
  })
}

/** Issues the command; `direct` tells whether the CLI stored it itself (no server asked). */
async function issue (config: Config, serial: string, request: CommandRequest): Promise<{ result: IssueResult, direct: boolean }> {
  let direct = false
  const result = await viaServerOrDatabase<IssueResult>(config, 'command.issue', { serial, request }, async (db) => {
    direct = true
    return await commandsOn(db).issue(serial, request)
  })
  return { result, direct }
}

const fetchCommand = async (config: Config, id: string): Promise<Answer | null> =>
  await viaServerOrDatabase<Answer | null>(config, 'command.get', { id }, async db => await commandsOn(db).get(id) ?? null)

export async function command (args: string[], output: Output): Promise<void> {
  const { values, positionals: [serial, name] } = parseCommand(args, {
    wait: { type: 'boolean', default: false },
    timeout: { type: 'string', default: '30' },
    ttl: { type: 'string' },
    echo: { type: 'string' }
  }, 2)
  if (!isValidSerial(serial)) throw new UsageError(`${JSON.stringify(serial)} is not a valid serial`)
  if (!(COMMANDS as readonly string[]).includes(name!)) throw new UsageError(`command must be one of ${COMMANDS.join(', ')}`)
  const timeoutSeconds = Number(values.timeout)
  if (!Number.isInteger(timeoutSeconds) || timeoutSeconds < 1) throw new UsageError('--timeout must be a whole number of seconds')
  const ttl = values.ttl === undefined ? undefined : Number(values.ttl)
  if (ttl !== undefined && !Number.isInteger(ttl)) throw new UsageError('--ttl must be a whole number of seconds')
  if (values.echo !== undefined && name !== 'ping') throw new UsageError('--echo goes with ping only')

  const request: CommandRequest = {
    command: name!,
    ...(name === 'ping' ? { payload: { echo: values.echo ?? new Date().toISOString() } } : {}),
    ...(ttl === undefined ? {} : { ttl_seconds: ttl })
  }
  const config = loadConfig()
  const { result, direct } = await issue(config, serial, request)
  if (!result.ok) {
    if (result.reason === 'invalid') throw new UsageError(result.message.replace('ttl_seconds', '--ttl'))
    if (result.reason === 'not_found') throw new CommandError(`no device with serial ${serial}`)
    throw new CommandError(`device ${serial} is revoked; unrevoke it before sending it commands`)
  }
  const { id, state } = result.command
  // stored by the CLI itself, a command is queued: the server holding the device sends it at once
  const queued = direct ? `queued for ${serial}: delivered now if it is connected, else when it connects` : `queued for ${serial}: delivered when it connects`
  output.out(`command ${id} (${name}) ${state === 'sent' ? `sent to ${serial}` : queued}`)
  if (!values.wait) return
  if (direct && config.databaseUrl === undefined) {
    throw new CommandError(`no server is running on DATA_DIR=${config.dataDir}; the command waits in the database until one runs and ${serial} connects`)
  }

  const deadline = Date.now() + timeoutSeconds * 1000
  for (;;) {
    const current = await fetchCommand(config, id)
    if (current === null) throw new CommandError(`command ${id} is gone (the device was deleted)`)
    if (current.state === 'ok') {
      const took = current.round_trip_ms === null ? '' : ` in ${Math.round(current.round_trip_ms)} ms`
      output.out(`${name} ok${took}: ${JSON.stringify(current.result)}`)
      return
    }
    if (current.state === 'error') throw new CommandError(`${name} failed on ${serial}: ${current.error ?? 'no reason given'}`)
    if (current.state === 'expired') throw new CommandError(`${name} expired before ${serial} answered`)
    if (Date.now() >= deadline) throw new CommandError(`no answer from ${serial} within ${timeoutSeconds} s; the command is still ${current.state} (GET /api/commands/${id})`)
    await sleep(POLL_MS)
  }
}
