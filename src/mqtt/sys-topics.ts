// `$SYS/broker/…` topics as Mosquitto names them, for monitoring tools (contract §3): retained,
// refreshed every 10 s. Observers can read them; devices cannot. With several nodes each node
// publishes its own figures, so the retained values are those of the node that published last.
import type { Publish } from '../ports.js'
import type { Logger } from '../logger.js'

export const SYS_INTERVAL_MS = 10_000

export interface SysFigures {
  version: string
  startedAt: number
  connectedClients (): number
  connectedDevices (): number
  messages (): { received: number, sent: number }
}

export function sysMessages (figures: SysFigures, now = Date.now()): Array<[topic: string, value: string]> {
  const { received, sent } = figures.messages()
  return [
    ['$SYS/broker/version', figures.version],
    ['$SYS/broker/uptime', `${Math.floor((now - figures.startedAt) / 1000)} seconds`],
    ['$SYS/broker/clients/connected', String(figures.connectedClients())],
    ['$SYS/broker/clients/active', String(figures.connectedClients())],
    ['$SYS/broker/messages/received', String(received)],
    ['$SYS/broker/messages/sent', String(sent)],
    ['$SYS/broker/publish/messages/received', String(received)],
    ['$SYS/broker/publish/messages/sent', String(sent)],
    ['$SYS/broker/heap/current', String(process.memoryUsage().heapUsed)],
    ['$SYS/broker/shepherd/devices/connected', String(figures.connectedDevices())]
  ]
}

/** Publishes the figures now and every `intervalMs`; answers the stop function. */
export function startSysTopics (publish: Publish, figures: SysFigures, logger: Logger, intervalMs = SYS_INTERVAL_MS): () => void {
  const tick = (): void => {
    for (const [topic, value] of sysMessages(figures)) {
      publish(topic, value, { qos: 0, retain: true }).catch((error: unknown) => { logger.warn({ topic, err: error }, 'could not publish a $SYS topic') })
    }
  }
  tick()
  const timer = setInterval(tick, intervalMs)
  timer.unref()
  return () => { clearInterval(timer) }
}
