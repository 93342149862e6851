// Plain command records and the repository port the commands domain depends on. Implemented by
// storage/repos/commands-repo.ts; the domain never sees knex.
import type { TimeKey } from '../paging.js'

export const COMMAND_NAMES = ['reboot', 'identify', 'ping', 'update'] as const
export type CommandName = typeof COMMAND_NAMES[number]

export const COMMAND_STATES = ['queued', 'sent', 'ok', 'error', 'expired'] as const
export type CommandState = typeof COMMAND_STATES[number]

export interface Command {
  id: string
  serial: string
  command: CommandName
  payload: Record<string, unknown>
  state: CommandState
  result: unknown
  error: string | null
  idempotency_key: string | null
  /** The group fan-out it belongs to. */
  batch_id: string | null
  issued_at: Date
  expires_at: Date
  /** The latest delivery to the device. */
  sent_at: Date | null
  /** When it became ok, error or expired. */
  completed_at: Date | null
  /** From the latest delivery to the reply. */
  round_trip_ms: number | null
}

export type NewCommand = Pick<Command, 'id' | 'serial' | 'command' | 'payload' | 'state' | 'idempotency_key' | 'batch_id' | 'issued_at' | 'expires_at' | 'sent_at'>

export interface CommandBatch {
  id: string
  group_id: number | null
  command: CommandName
  payload: Record<string, unknown>
  idempotency_key: string | null
  issued_at: Date
  expires_at: Date
}

export interface BatchCounts { total: number, states: Record<CommandState, number> }

export interface DeviceReply { state: 'ok' | 'error', result: unknown, error: string | null }

export type CompleteOutcome =
  | { completed: true, command: Command }
  /** `state`: the command's state when it is this device's but already finished; undefined when unknown. */
  | { completed: false, state: CommandState | undefined }

export interface CommandRepository {
  /** Inserts the command; with an idempotency key this device used before, answers that command (`inserted: false`). */
  insert (command: NewCommand): Promise<{ command: Command, inserted: boolean }>
  /** Inserts commands without idempotency keys, in one statement per chunk; answers them in the same order. */
  insertMany (commands: NewCommand[]): Promise<Command[]>
  /** Inserts a fan-out and its commands at once; with a key the group used before, answers that fan-out and its commands. */
  insertBatch (batch: CommandBatch, commands: NewCommand[]): Promise<{ batch: CommandBatch, commands: Command[], inserted: boolean }>
  find (id: string): Promise<Command | undefined>
  /** A device's commands, newest first, before the keyset `before`. */
  listForDevice (serial: string, options: { state?: CommandState, before?: TimeKey, limit: number }): Promise<Command[]>
  /**
   * Marks the device's queued and sent commands (only the queued ones with `onlyQueued`) that have
   * not expired at `now` as sent at `now`; answers them oldest first.
   */
  takeDeliverable (serial: string, now: Date, onlyQueued?: boolean): Promise<Command[]>
  /** Devices with queued commands not expired at `now`. */
  serialsWithQueued (now: Date): Promise<string[]>
  /** Records a reply to an open command of this device. */
  complete (serial: string, id: string, reply: DeviceReply, at: Date): Promise<CompleteOutcome>
  /** Marks open commands whose expiry has passed as expired; answers how many. */
  expire (now: Date): Promise<number>
  findBatch (id: string): Promise<(CommandBatch & BatchCounts) | undefined>
}
