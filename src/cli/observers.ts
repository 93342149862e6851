// `shepherd observer add NAME | list | remove NAME`: read-only MQTT accounts for third-party
// tools. The generated password is printed once, alone on the last line of stdout; only its
// scrypt hash is stored. Users of MQTT_PASSWORD_FILE are managed with mosquitto_passwd instead.
import { loadConfig } from '../config.js'
import { CommandError, UsageError } from '../errors.js'
import { createObservers, isValidObserverName, type AddObserverResult } from '../observers/observers.js'
import type { Database } from '../storage/db.js'
import { createObserverRepository } from '../storage/repos/observers-repo.js'
import { parseCommand, withSubcommands, type Output } from './main.js'
import { viaServerOrDatabase } from './via-server.js'

const observersOf = (db: Database) => createObservers({ repo: createObserverRepository(db.knex) })

function nameOf (args: string[]): string {
  const name = parseCommand(args, {}, 1).positionals[0]!
  if (!isValidObserverName(name)) throw new UsageError(`${JSON.stringify(name)} is not a valid observer name (1–64 of A-Z a-z 0-9 . _ @ -, starting with a letter or digit)`)
  return name
}

async function add (args: string[], output: Output): Promise<void> {
  const name = nameOf(args)
  const result = await viaServerOrDatabase<AddObserverResult>(loadConfig(), 'observer.add', { name }, db => observersOf(db).add(name))
  if (!result.ok) throw new CommandError(`an observer named ${JSON.stringify(name)} already exists; remove it first or choose another name`)
  output.out(`observer ${JSON.stringify(name)} created: MQTT username ${name}, read-only (shepherd/# and $SYS/#). The password will not be shown again:`)
  output.out(result.password)
}

async function list (args: string[], output: Output): Promise<void> {
  parseCommand(args, {})
  const observers = await viaServerOrDatabase<Array<{ name: string, inserted_at: Date | string }>>(loadConfig(), 'observer.list', {}, db => observersOf(db).list())
  if (observers.length === 0) {
    output.out('no observers; create one with `shepherd observer add NAME`')
    return
  }
  const width = Math.max(4, ...observers.map(observer => observer.name.length))
  output.out(`${'NAME'.padEnd(width)}  CREATED`)
  for (const observer of observers) output.out(`${observer.name.padEnd(width)}  ${new Date(observer.inserted_at).toISOString().replace(/\.\d{3}Z$/, 'Z')}`)
}

async function remove (args: string[], output: Output): Promise<void> {
  const name = nameOf(args)
  const removed = await viaServerOrDatabase<boolean>(loadConfig(), 'observer.remove', { name }, db => observersOf(db).remove(name))
  if (!removed) throw new CommandError(`no observer named ${JSON.stringify(name)}`)
  output.out(`observer ${JSON.stringify(name)} removed (new logins are refused; its open connections are closed within 10 s)`)
}

export const observer = withSubcommands('observer', { add, list, remove })
