// GET /api/events: the fleet's live events (from every node) as Server-Sent Events, optionally
// filtered by serial and type, with heartbeat comments so that proxies keep idle streams open.
import { PassThrough, type Readable } from 'node:stream'
import type { FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import { Type } from 'typebox'
import { EVENT_TYPES, isEventType } from '../../events/events.js'
import type { DeliveredEvent } from '../../events/event-bus.js'
import { isValidSerial } from '../../topics.js'
import { ApiError } from '../api-errors.js'
import { errors } from '../schemas.js'

export interface EventsRouteDeps {
  subscribe (listener: (event: DeliveredEvent) => void): () => void
  /** Interval of the `: heartbeat` comment on every open stream. */
  heartbeatMs: number
}

/** A client this far behind (a stalled reader) is disconnected instead of buffered for without end. */
const MAX_BUFFERED_BYTES = 1024 * 1024

const EventsQuery = Type.Object({
  serial: Type.Optional(Type.String({ description: 'comma-separated serials: only their events' })),
  type: Type.Optional(Type.String({ description: `comma-separated event types: ${EVENT_TYPES.join(', ')}` }))
}, { additionalProperties: false })

/** `a,b` → Set {a, b}; absent or empty → undefined (no filter). */
function listOf (value: string | undefined, field: string, valid: (item: string) => boolean, what: string): Set<string> | undefined {
  const items = (value ?? '').split(',').map(item => item.trim()).filter(item => item !== '')
  if (items.length === 0) return undefined
  const invalid = items.find(item => !valid(item))
  if (invalid !== undefined) throw new ApiError('invalid_request', `${field}: ${JSON.stringify(invalid)} is not ${what}`, field)
  return new Set(items)
}

function send (stream: PassThrough, frame: string): void {
  if (stream.destroyed || stream.writableEnded) return
  if (stream.writableLength > MAX_BUFFERED_BYTES) {
    stream.destroy()
    return
  }
  stream.write(frame)
}

export function eventRoutes (deps: EventsRouteDeps): FastifyPluginAsync {
  return async (plain) => {
    const app = plain.withTypeProvider<TypeBoxTypeProvider>()
    const open = new Set<PassThrough>()
    const heartbeat = setInterval(() => { for (const stream of open) send(stream, ': heartbeat\n\n') }, deps.heartbeatMs)
    heartbeat.unref()
    // Ending the streams lets the HTTP server close: it waits for every response to finish.
    app.addHook('preClose', async () => {
      clearInterval(heartbeat)
      for (const stream of open) stream.end()
    })

    app.get('/api/events', {
      exposeHeadRoute: false, // a HEAD answer would leave its stream open and subscribed
      schema: {
        summary: 'Live events (Server-Sent Events)',
        description: `Frames \`event: <type>\` + \`data: <JSON with serial>\`; types: ${EVENT_TYPES.join(', ')}. ` +
          'A `: heartbeat` comment is sent periodically.',
        tags: ['events'],
        querystring: EventsQuery,
        response: {
          200: { description: 'an event stream', content: { 'text/event-stream': { schema: Type.Unsafe<Readable>(Type.String()) } } },
          ...errors(400, 401)
        }
      }
    }, async (request, reply) => {
      const serials = listOf(request.query.serial, 'serial', isValidSerial, 'a valid serial')
      const types = listOf(request.query.type, 'type', isEventType, `an event type (${EVENT_TYPES.join(', ')})`)
      const stream = new PassThrough()
      stream.on('error', () => {}) // a write racing a disconnect; the stream is closed either way
      const unsubscribe = deps.subscribe((event) => {
        if (types !== undefined && !types.has(event.type)) return
        if (serials !== undefined && !serials.has(event.serial)) return
        send(stream, `event: ${event.type}\ndata: ${event.json}\n\n`)
      })
      open.add(stream)
      // closed when the client goes away (Fastify destroys the stream) or after ending it
      stream.once('close', () => {
        unsubscribe()
        open.delete(stream)
      })
      stream.write(': connected\n\n') // sends the headers now, so the client knows it is subscribed
      return reply
        .header('content-type', 'text/event-stream; charset=utf-8')
        .header('cache-control', 'no-cache')
        .header('x-accel-buffering', 'no') // nginx: do not buffer the stream
        .send(stream)
    })
  }
}
