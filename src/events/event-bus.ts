// Carries events between Shepherd nodes on the broker's message bus (mqemitter in process,
// mqemitter-redis with REDIS_URL), on internal `$shepherd/events/<type>` topics: devices cannot
// subscribe to them (device ACL), and Aedes never forwards `$` topics to `#` subscriptions.
// Each node subscribes once and fans events out to its local listeners (the SSE streams).
import type { Logger } from '../logger.js'
import type { EventSink, EventType } from './events.js'

export const EVENTS_TOPIC_PREFIX = '$shepherd/events/'

/** An event as a node receives it: its data serialised once, by the node that emitted it. */
export interface DeliveredEvent { type: EventType, serial: string, json: string }

interface EventMessage extends DeliveredEvent { topic: string }

type MessageHandler = (message: EventMessage, done: () => void) => void

/** The part of mqemitter's API used here (`broker.aedes.mq`). */
export interface MessageEmitter {
  on (topic: string, handler: MessageHandler, callback?: () => void): unknown
  removeListener (topic: string, handler: MessageHandler, callback?: () => void): unknown
  emit (message: { topic: string }, callback?: (error?: Error) => void): unknown
}

export interface EventBus extends EventSink {
  /** Calls `listener` with every event of every node from now on; answers the unsubscribe. */
  subscribe (listener: (event: DeliveredEvent) => void): () => void
  /** Local listeners (open SSE streams of this node). */
  listenerCount (): number
}

export function createEventBus (mq: MessageEmitter, logger: Logger): EventBus {
  const listeners = new Set<(event: DeliveredEvent) => void>()
  const onMessage: MessageHandler = (message, done) => {
    const event: DeliveredEvent = { type: message.type, serial: message.serial, json: message.json }
    for (const listener of listeners) {
      try {
        listener(event)
      } catch (error) {
        logger.error({ err: error, type: event.type }, 'event listener failed')
      }
    }
    done()
  }
  // Closing the broker closes the bus, which drops this subscription.
  mq.on(`${EVENTS_TOPIC_PREFIX}#`, onMessage)

  return {
    emit (event) {
      const message: EventMessage = {
        topic: EVENTS_TOPIC_PREFIX + event.type, type: event.type, serial: event.data.serial, json: JSON.stringify(event.data)
      }
      mq.emit(message, (error) => {
        if (error !== undefined && error !== null) logger.warn({ err: error, type: event.type, serial: event.data.serial }, 'could not emit event')
      })
    },
    subscribe (listener) {
      listeners.add(listener)
      return () => { listeners.delete(listener) }
    },
    listenerCount: () => listeners.size
  }
}
