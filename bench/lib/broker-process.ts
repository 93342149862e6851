// Child-process entry of the connect benchmark: runs one broker (Shepherd or bare Aedes, per the
// BrokerSpec in argv[2]), counts the retained online statuses it publishes, and answers the
// driver's requests for its own CPU time and RSS (see broker-handle.ts for the protocol).
import { openSync, readSync } from 'node:fs'
import { startBaseline, startShepherd, type BenchBroker } from './brokers.js'
import type { BrokerSpec, Reply, Request } from './broker-handle.js'

const STATUS_TOPIC = /^shepherd\/devices\/[^/]+\/status$/
const spec = JSON.parse(process.argv[2] ?? '{}') as BrokerSpec
const collectGarbage = (globalThis as { gc?: () => void }).gc ?? (() => {})
const send = (reply: Reply): void => { process.send?.(reply) }
const sendAndExit = (reply: Reply, code: number): void => {
  if (process.send === undefined) process.exit(code)
  process.send(reply, () => process.exit(code))
}

process.on('disconnect', () => { process.exit(1) }) // the driver went away

const broker: BenchBroker = await (spec.kind === 'shepherd'
  ? startShepherd({ transport: spec.transport, dataDir: spec.dataDir, fleetCaPath: spec.fleetCaPath, databaseUrl: spec.databaseUrl })
  : startBaseline(spec.transport)
).catch((error: unknown) => {
  sendAndExit({ type: 'failed', message: `could not start: ${(error as Error).message}` }, 1)
  return new Promise<never>(() => {}) // exits once the message is out
})

let online = 0
let awaited: number | undefined
const answerSessions = (): void => {
  if (awaited === undefined || online < awaited) return
  awaited = undefined
  send({ type: 'sessions', count: online })
}
// Shepherd publishes the status itself (client null); on the baseline the device does.
broker.aedes.on('publish', (packet) => {
  if (!packet.retain || !STATUS_TOPIC.test(packet.topic) || !packet.payload.toString().includes('"status":"online"')) return
  online++
  answerSessions()
})

/** Collects garbage twice, a second apart, so that RSS no longer holds what startup left behind. */
async function settle (): Promise<void> {
  collectGarbage()
  await new Promise(resolve => setTimeout(resolve, 1000))
  collectGarbage()
}

async function sample (moment: 'before' | 'after'): Promise<Reply> {
  if (moment === 'before') {
    online = 0
    await settle()
  }
  const { user, system } = process.cpuUsage()
  if (moment === 'after') await settle()
  return { type: 'sample', cpuMicros: user + system, rssBytes: residentSetSize() }
}

// process.memoryUsage() opens /proc/self/stat on each call, which fails (EMFILE) once the devices
// have taken every descriptor; /proc/self/status opened up front can be reread at offset 0.
const procStatus = (() => { try { return openSync('/proc/self/status', 'r') } catch { return undefined } })()

/** Bytes, or null when it cannot be read. */
function residentSetSize (): number | null {
  try {
    if (procStatus === undefined) return process.memoryUsage.rss()
    const buffer = Buffer.alloc(8192)
    const text = buffer.toString('latin1', 0, readSync(procStatus, buffer, 0, buffer.length, 0))
    const kib = /^VmRSS:\s+(\d+) kB$/m.exec(text)?.[1]
    return kib === undefined ? process.memoryUsage.rss() : Number(kib) * 1024
  } catch {
    return null
  }
}

process.on('message', (request: Request) => {
  switch (request.type) {
    case 'sample':
      void sample(request.moment).then(send)
      break
    case 'sessions':
      awaited = request.count
      answerSessions()
      break
    case 'close':
      broker.close().then(
        () => { sendAndExit({ type: 'closed' }, 0) },
        (error: unknown) => { sendAndExit({ type: 'failed', message: `close: ${(error as Error).message}` }, 1) })
      break
  }
})

send({ type: 'ready', url: broker.url })
