// `shepherd` command line (contract §5): dispatches to one module per command group. Exit 0 on
// success, 1 on a failure the message explains, 2 on bad usage (with the help text).
import { parseArgs, type ParseArgsConfig } from 'node:util'
import { CommandError, ConfigError, StartupError, UsageError } from '../errors.js'

export const HELP = `Usage: shepherd <command> [options]

Commands:
  start                                   migrate the database, then serve REST + MQTT until SIGINT/SIGTERM
  migrate                                 run pending database migrations
  gen-ca [--dir priv/ca] [--force]        create the Fleet CA (never overwrites without --force)
  gen-device-cert --serial S [--ca-dir priv/ca] [--dir priv/devices] [--days 1825]
                                          create a device key and certificate signed by the Fleet CA
  revoke SERIAL                           revoke a device (a connected device is disconnected at once)
  command SERIAL ping|identify|reboot [--wait] [--timeout 30] [--ttl SECONDS] [--echo TEXT]
                                          send a command to a device; --wait prints its answer
  firmware upload FILE --version V --target T [--application A]
                                          add a firmware file to the store (FIRMWARE_DIR), with a progress bar
  observer add NAME                       create a read-only MQTT account and print its password once (alone on the last line)
  observer list                           list observer accounts
  observer remove NAME                    delete an observer account
  token create --name N                   create a REST API token and print it once (alone on the last line)
  token list                              list REST API tokens: name, created, last used
  token revoke NAME                       revoke a REST API token
  simulate --devices N [--url ws://localhost:4000/mqtt] [--ca-dir priv/ca] [--duration SECONDS]
           [--prefix sim-XXXX] [--metrics-interval 10]
                                          run N simulated devices (certificates made on the fly)

Settings come from the environment (DATABASE_URL, DATA_DIR, PORT, MQTT_PORT, ...; see README).`

export interface Output { out (line: string): void, err (line: string): void }

type Options = NonNullable<ParseArgsConfig['options']>

export interface ParsedCommand<V> { values: V, positionals: string[] }

/** parseArgs with the errors turned into UsageError. */
export function parseCommand<O extends Options> (args: string[], options: O, positionals = 0): ParsedCommand<ReturnType<typeof parseArgs<{ options: O, args: string[], allowPositionals: true, strict: true }>>['values']> {
  try {
    const parsed = parseArgs({ args, options, allowPositionals: true, strict: true })
    if (parsed.positionals.length !== positionals) {
      throw new UsageError(positionals === 0 ? `unexpected argument ${parsed.positionals[0]}` : `expected ${positionals} argument(s)`)
    }
    return { values: parsed.values, positionals: parsed.positionals }
  } catch (error) {
    if (error instanceof UsageError) throw error
    throw new UsageError((error as Error).message)
  }
}

type Command = (args: string[], output: Output) => Promise<void>

/** A command made of subcommands (`token create|list|revoke`): runs the one named first. */
export function withSubcommands (group: string, subcommands: Record<string, Command>): Command {
  const names = Object.keys(subcommands)
  const expected = `expected ${names.length === 1 ? names[0] : `${names.slice(0, -1).join(', ')} or ${names.at(-1)}`}`
  return async (args, output) => {
    const [name, ...rest] = args
    const subcommand = name !== undefined && Object.hasOwn(subcommands, name) ? subcommands[name] : undefined
    if (subcommand === undefined) throw new UsageError(name === undefined ? expected : `unknown ${group} command ${JSON.stringify(name)} (${expected})`)
    await subcommand(rest, output)
  }
}

// Loaded on demand: `revoke` or `gen-ca` should not pay for loading the whole server.
const COMMANDS: Record<string, () => Promise<Command>> = {
  start: async () => (await import('./start.js')).start,
  migrate: async () => (await import('./migrate.js')).migrate,
  'gen-ca': async () => (await import('./certs.js')).genCa,
  'gen-device-cert': async () => (await import('./certs.js')).genDeviceCert,
  revoke: async () => (await import('./revoke.js')).revoke,
  token: async () => (await import('./tokens.js')).token,
  command: async () => (await import('./command.js')).command,
  firmware: async () => (await import('./firmware.js')).firmware,
  observer: async () => (await import('./observers.js')).observer,
  simulate: async () => (await import('./simulate.js')).simulate
}

export async function runCli (argv: string[], output: Output = { out: line => { process.stdout.write(line + '\n') }, err: line => { process.stderr.write(line + '\n') } }): Promise<number> {
  const [name, ...args] = argv
  if (name === undefined) { // bad usage: the help goes where every usage error's goes
    output.err(HELP)
    return 2
  }
  if (name === 'help' || name === '--help' || name === '-h') {
    output.out(HELP)
    return 0
  }
  const load = Object.hasOwn(COMMANDS, name) ? COMMANDS[name] : undefined
  try {
    if (load === undefined) throw new UsageError(`unknown command ${JSON.stringify(name)}`)
    await (await load())(args, output)
    return 0
  } catch (error) {
    if (error instanceof UsageError) {
      output.err(`shepherd ${name}: ${error.message}\n\n${HELP}`)
      return 2
    }
    if (error instanceof CommandError || error instanceof ConfigError || error instanceof StartupError) {
      output.err(`shepherd ${name}: ${error.message}`)
      return 1
    }
    output.err(`shepherd ${name}: ${(error as Error).stack ?? String(error)}`)
    return 1
  }
}
