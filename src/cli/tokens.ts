// `shepherd token create --name N | list | revoke NAME`: REST API tokens. The token is printed
// once, alone on the last line of stdout, and never logged; only its hash is stored.
import { loadConfig } from '../config.js'
import { CommandError, UsageError } from '../errors.js'
import { createApiTokens, isValidTokenName, type CreateTokenResult } from '../operators/api-tokens.js'
import type { Database } from '../storage/db.js'
import { createApiTokenRepository } from '../storage/repos/api-tokens-repo.js'
import { parseCommand, withSubcommands, type Output } from './main.js'
import { viaServerOrDatabase } from './via-server.js'

/** A token's record as the CLI gets it: dates are strings when they come over the control socket. */
interface TokenListing { name: string, inserted_at: Date | string, last_used_at: Date | string | null }

const tokensOf = (db: Database) => createApiTokens(createApiTokenRepository(db.knex))

function validName (name: string | undefined): string {
  if (name === undefined) throw new UsageError('--name is required')
  if (!isValidTokenName(name)) throw new UsageError(`${JSON.stringify(name)} is not a valid token name (1–64 of A-Z a-z 0-9 . _ -, starting with a letter or digit)`)
  return name
}

const when = (date: Date | string | null): string => date === null ? 'never' : new Date(date).toISOString().replace(/\.\d{3}Z$/, 'Z')

async function create (args: string[], output: Output): Promise<void> {
  const name = validName(parseCommand(args, { name: { type: 'string' } }).values.name)
  const result = await viaServerOrDatabase<CreateTokenResult>(loadConfig(), 'token.create', { name }, db => tokensOf(db).create(name))
  if (!result.ok) {
    if (result.reason === 'invalid_name') throw new UsageError(`${JSON.stringify(name)} is not a valid token name`)
    throw new CommandError(`an API token named ${JSON.stringify(name)} already exists; revoke it first or choose another name`)
  }
  output.out(`API token ${JSON.stringify(name)} created. It will not be shown again; store it now:`)
  output.out(result.token)
}

async function list (args: string[], output: Output): Promise<void> {
  parseCommand(args, {})
  const tokens = await viaServerOrDatabase<TokenListing[]>(loadConfig(), 'token.list', {}, db => tokensOf(db).list())
  if (tokens.length === 0) {
    output.out('no API tokens; create one with `shepherd token create --name NAME`')
    return
  }
  const rows = [['NAME', 'CREATED', 'LAST USED'], ...tokens.map(token => [token.name, when(token.inserted_at), when(token.last_used_at)])]
  const width = Math.max(...rows.map(([name]) => name!.length))
  for (const [name, created, used] of rows) output.out(`${name!.padEnd(width)}  ${created!.padEnd(20)}  ${used}`)
}

async function revoke (args: string[], output: Output): Promise<void> {
  const name = validName(parseCommand(args, {}, 1).positionals[0])
  const removed = await viaServerOrDatabase<boolean>(loadConfig(), 'token.revoke', { name }, db => tokensOf(db).revoke(name))
  if (!removed) throw new CommandError(`no API token named ${JSON.stringify(name)}`)
  output.out(`API token ${JSON.stringify(name)} revoked`)
}

export const token = withSubcommands('token', { create, list, revoke })
