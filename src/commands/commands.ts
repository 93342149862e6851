// Commands to devices, tracked from request to result: issued to one device or to every member of
// a group, delivered on the device's `commands` topic at once when it is connected and otherwise
// when it next subscribes (in the order issued, never after expiry), completed by its reply, and
// expired when nobody answered in time. Delivery is at least once: a command sent but not
// answered is sent again when the device subscribes again, so devices recognise repeats by id.
// Knows nothing of MQTT, HTTP or knex.
import { randomUUID } from 'node:crypto'
import type { EventSink } from '../events/events.js'
import { createKeyedQueue } from '../keyed-queue.js'
import type { Logger } from '../logger.js'
import { pageByTime, type Page } from '../paging.js'
import type { Publish } from '../ports.js'
import { deviceTopic } from '../topics.js'
import { checkCommandRequest, parseReply, sameRequest, type CommandRequest } from './command-request.js'
import type { BatchCounts, Command, CommandBatch, CommandRepository, CommandState, NewCommand } from './types.js'

/** What the commands domain needs to know of a device. */
export interface CommandTarget { serial: string, status: 'online' | 'offline', revoked: boolean }

export interface CommandsDeps {
  repo: CommandRepository
  findDevice (serial: string): Promise<CommandTarget | undefined>
  /** A group's members; undefined when there is no such group. */
  groupMembers (groupId: number): Promise<CommandTarget[] | undefined>
  /** Publishes to devices (a server). Without it (the CLI) every command is queued. */
  publish?: Publish
  /**
   * Tells every server (this one too) that commands were queued for these devices: a node holding
   * one of them delivers at once. A device whose row still says offline may have just connected
   * (its row is marked online a moment later) or be connected to another node.
   */
  announceQueued? (serials: string[]): Promise<void>
  /** The payload to deliver, decided at each delivery (an update's URL is signed anew); undefined: not delivered. */
  payloadForDelivery? (command: Command): Promise<Record<string, unknown> | undefined>
  events: EventSink
  logger: Logger
  now? (): Date
}

export type IssueResult =
  | { ok: true, command: Command, replayed: boolean }
  | { ok: false, reason: 'invalid', field: string, message: string }
  | { ok: false, reason: 'not_found' | 'revoked' | 'idempotency_conflict' }

export type GroupIssueResult =
  | { ok: true, batch: CommandBatch, commands: Command[], skipped: Array<{ serial: string, reason: 'revoked' }>, replayed: boolean }
  | { ok: false, reason: 'invalid', field: string, message: string }
  | { ok: false, reason: 'not_found' | 'idempotency_conflict' }

export type ReplyResult = { ok: true, command: Command } | { ok: false, reason: string }

/** The command message of contract §3. */
function message (command: Command, payload: Record<string, unknown>): string {
  return JSON.stringify({
    id: command.id, command: command.command, payload,
    issued_at: command.issued_at.toISOString(), expires_at: command.expires_at.toISOString()
  })
}

export function createCommands (deps: CommandsDeps) {
  const { repo, publish, events, logger } = deps
  const now = deps.now ?? (() => new Date())
  // deliveries to one device go out one after another, in the order they were decided
  const deliveries = createKeyedQueue()
  // on PostgreSQL two replies applied at once could commit in either order
  const replies = createKeyedQueue()

  async function send (commands: Command[]): Promise<void> {
    if (publish === undefined) return
    for (const command of commands) {
      const payload = deps.payloadForDelivery === undefined ? command.payload : await deps.payloadForDelivery(command)
      if (payload === undefined) continue
      await publish(deviceTopic(command.serial, 'commands'), message(command, payload), { qos: 1, retain: false }).catch((error: unknown) => {
        // stays `sent`: delivered again when the device next subscribes
        logger.warn({ serial: command.serial, command: command.id, err: error }, 'could not publish a command')
      })
    }
  }

  function newCommand (target: CommandTarget, checked: { command: Command['command'], payload: Record<string, unknown> }, at: Date, expiresAt: Date, extra: { idempotency_key: string | null, batch_id: string | null }): NewCommand {
    const sendNow = publish !== undefined && target.status === 'online'
    return {
      id: randomUUID(), serial: target.serial, command: checked.command, payload: checked.payload,
      state: sendNow ? 'sent' : 'queued', sent_at: sendNow ? at : null, issued_at: at, expires_at: expiresAt, ...extra
    }
  }

  async function recordReply (serial: string, payload: Buffer): Promise<ReplyResult> {
    const reply = parseReply(payload)
    if (!reply.ok) return reply
    const outcome = await repo.complete(serial, reply.id, reply, now())
    if (!outcome.completed) {
      // another device's command id is answered like an unknown one: nothing about it leaks
      return { ok: false, reason: outcome.state === undefined ? `no command ${reply.id} for this device` : `command ${reply.id} is already ${outcome.state}` }
    }
    const { command } = outcome
    logger.info({ serial, id: command.id, command: command.command, state: command.state, round_trip_ms: command.round_trip_ms }, 'command answered')
    events.emit({
      type: 'command.reply',
      data: {
        serial, id: command.id, command: command.command, status: reply.state, round_trip_ms: command.round_trip_ms,
        ...(reply.result === null ? {} : { result: reply.result }), ...(reply.error === null ? {} : { error: reply.error })
      }
    })
    return { ok: true, command }
  }

  function deliverOpen (serial: string, onlyQueued: boolean): Promise<void> {
    return deliveries.run(serial, async () => {
      await send(await repo.takeDeliverable(serial, now(), onlyQueued))
    }).catch((error: unknown) => { logger.error({ serial, err: error }, 'could not deliver queued commands') })
  }

  const ttlOf = (record: { issued_at: Date, expires_at: Date }): number => record.expires_at.getTime() - record.issued_at.getTime()

  /** Publishes the commands issued as `sent`, and announces the queued ones. */
  async function deliverOrAnnounce (commands: Command[]): Promise<void> {
    const queued = commands.filter(command => command.state === 'queued').map(command => command.serial)
    await Promise.all([
      ...commands.filter(command => command.state === 'sent').map(command => deliveries.run(command.serial, () => send([command]))),
      queued.length === 0 ? undefined : deps.announceQueued?.(queued).catch((error: unknown) => {
        // still delivered when the device next subscribes
        logger.warn({ devices: queued.length, err: error }, 'could not announce queued commands')
      })
    ])
  }

  return {
    /** Issues a command to one device: `sent` when it is connected now, `queued` otherwise. */
    async issue (serial: string, request: CommandRequest, idempotencyKey?: string): Promise<IssueResult> {
      const checked = checkCommandRequest(request)
      if (!checked.ok) return { ok: false, reason: 'invalid', field: checked.field, message: checked.message }
      const device = await deps.findDevice(serial)
      if (device === undefined) return { ok: false, reason: 'not_found' }
      if (device.revoked) return { ok: false, reason: 'revoked' }
      const at = now()
      const draft = newCommand(device, checked, at, new Date(at.getTime() + checked.ttlSeconds * 1000), { idempotency_key: idempotencyKey ?? null, batch_id: null })
      const { command, inserted } = await repo.insert(draft)
      if (!inserted) {
        const same = sameRequest({ command: command.command, payload: command.payload, ttlMs: ttlOf(command) }, { command: checked.command, payload: checked.payload, ttlMs: checked.ttlSeconds * 1000 })
        return same ? { ok: true, command, replayed: true } : { ok: false, reason: 'idempotency_conflict' }
      }
      logger.info({ serial, command: command.command, id: command.id, state: command.state }, 'command issued')
      await deliverOrAnnounce([command])
      return { ok: true, command, replayed: false }
    },

    /**
     * Issues one command to each device, each with its own payload (an update's offer), in one
     * statement; the payloads are trusted (built by the server, not checked like a request).
     * Answers the commands in the order of `items`.
     */
    async issueEach (items: Array<{ target: CommandTarget, command: Command['command'], payload: Record<string, unknown> }>, ttlSeconds: number): Promise<Command[]> {
      const at = now()
      const expiresAt = new Date(at.getTime() + ttlSeconds * 1000)
      const issued = await repo.insertMany(items.map(item => newCommand(item.target, item, at, expiresAt, { idempotency_key: null, batch_id: null })))
      logger.info({ command: items[0]?.command, devices: issued.length }, 'commands issued')
      await deliverOrAnnounce(issued)
      return issued
    },

    /** Issues one command per member of a group (queued for the offline ones; revoked ones skipped). */
    async issueToGroup (groupId: number, request: CommandRequest, idempotencyKey?: string): Promise<GroupIssueResult> {
      const checked = checkCommandRequest(request)
      if (!checked.ok) return { ok: false, reason: 'invalid', field: checked.field, message: checked.message }
      const members = await deps.groupMembers(groupId)
      if (members === undefined) return { ok: false, reason: 'not_found' }
      const at = now()
      const expiresAt = new Date(at.getTime() + checked.ttlSeconds * 1000)
      const batchDraft: CommandBatch = {
        id: randomUUID(), group_id: groupId, command: checked.command, payload: checked.payload,
        idempotency_key: idempotencyKey ?? null, issued_at: at, expires_at: expiresAt
      }
      const targets = members.filter(member => !member.revoked)
      const skipped = members.filter(member => member.revoked).map(member => ({ serial: member.serial, reason: 'revoked' as const }))
      const drafts = targets.map(target => newCommand(target, checked, at, expiresAt, { idempotency_key: null, batch_id: batchDraft.id }))
      const { batch, commands, inserted } = await repo.insertBatch(batchDraft, drafts)
      if (!inserted) {
        const same = sameRequest({ command: batch.command, payload: batch.payload, ttlMs: ttlOf(batch) }, { command: checked.command, payload: checked.payload, ttlMs: checked.ttlSeconds * 1000 })
        if (!same) return { ok: false, reason: 'idempotency_conflict' }
        // the members the fan-out skipped, as far as the group still tells: revoked and without a command of it
        const inBatch = new Set(commands.map(command => command.serial))
        return { ok: true, batch, commands, skipped: skipped.filter(member => !inBatch.has(member.serial)), replayed: true }
      }
      logger.info({ group: groupId, command: batch.command, batch: batch.id, devices: commands.length, skipped: skipped.length }, 'command issued to a group')
      await deliverOrAnnounce(commands)
      return { ok: true, batch, commands, skipped, replayed: false }
    },

    /** The device listens on its commands topic: deliver what is waiting for it, oldest first (sent but unanswered ones again). */
    deliverPending: (serial: string): Promise<void> => deliverOpen(serial, false),

    /** The device listens here and commands were queued for it meanwhile: deliver those. */
    deliverQueued: (serial: string): Promise<void> => deliverOpen(serial, true),

    /** Devices that have queued commands waiting (to catch up on missed "command queued" announcements). */
    devicesWithQueued: (): Promise<string[]> => repo.serialsWithQueued(now()),

    /** A message on the device's `replies` topic; a device's replies are applied in the order they arrived. */
    recordReply: (serial: string, payload: Buffer): Promise<ReplyResult> => replies.run(serial, () => recordReply(serial, payload)),

    /** Open commands past their expiry become expired; answers how many. */
    expireDue: () => repo.expire(now()),

    get: (id: string) => repo.find(id),

    deviceExists: async (serial: string) => await deps.findDevice(serial) !== undefined,

    /** Throws InvalidCursor for a cursor this server did not issue. */
    async listForDevice (serial: string, options: { state?: CommandState, cursor?: string, limit: number }): Promise<Page<Command>> {
      return await pageByTime(options.cursor, options.limit, command => command.issued_at, async (before, limit) => await repo.listForDevice(serial, { state: options.state, before, limit }))
    },

    /** A group fan-out with its commands counted by state; undefined when it is not that group's. */
    async batch (groupId: number, batchId: string): Promise<(CommandBatch & BatchCounts) | undefined> {
      const batch = await repo.findBatch(batchId)
      return batch?.group_id === groupId ? batch : undefined
    }
  }
}

export type Commands = ReturnType<typeof createCommands>
