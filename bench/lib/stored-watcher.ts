// Watches what Shepherd's postgres handler stores, from a worker thread: polled from the load
// generator's own event loop, a poll waited behind thousands of busy MQTT clients (seconds over
// WebSocket on a loaded machine) and made points look stored late. Each poll reads only the rows
// added since the previous one and reports how many, and the latencies of the latency points.
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads'
import { setTimeout as sleep } from 'node:timers/promises'
import pg from 'pg'

export interface Stored { points: number, lastAtMs: number | null }

interface Spec { url: string, latencyMetric: string, pollMs: number }
type Report = { points: number, atMs: number, latenciesMs: number[] } | { error: string }

export interface StoredWatcher {
  /** Points seen so far, and the start of the poll that first saw the newest. */
  current (): Stored
  /** publish→stored of each latency point: its value (publish time) to the start of the poll that first saw it. */
  readonly latenciesMs: number[]
  stop (): Promise<void>
}

export async function startStoredWatcher (spec: Spec): Promise<StoredWatcher> {
  // Node 20 loads a worker's entry before its --import hooks: the entry registers tsx, then loads this file
  const entry = `import('tsx/esm/api').then(({ register }) => { register(); return import(${JSON.stringify(import.meta.url)}) })`
  const worker = new Worker(entry, { eval: true, workerData: spec })
  const stored: Stored = { points: 0, lastAtMs: null }
  const latenciesMs: number[] = []
  let failure: string | undefined
  worker.on('message', (report: Report) => {
    if ('error' in report) { failure = report.error; return }
    stored.points += report.points
    stored.lastAtMs = report.atMs
    latenciesMs.push(...report.latenciesMs)
  })
  worker.on('error', (error) => { failure = error.message })
  await new Promise<void>((resolve, reject) => {
    worker.once('online', resolve)
    worker.once('error', reject)
  })
  return {
    current () {
      if (failure !== undefined) throw new Error(`watching metric_points failed: ${failure}`)
      return stored
    },
    latenciesMs,
    async stop () { await worker.terminate() }
  }
}

async function watch ({ url, latencyMetric, pollMs }: Spec): Promise<void> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  // The postgres handler inserts from one writer, one statement at a time, into a table nothing
  // deletes from here: rows are appended, and become visible, in heap order. So a poll reads only
  // the new rows with a TID range scan (metric_points has no index on id to do it with).
  let lastTid = '(0,0)'
  for (;;) {
    const atMs = Date.now() // the rows this query sees were committed before it began
    const { rows: [row] } = await client.query<{ points: number, top: string | null, sent: number[] }>(
      `SELECT count(*)::int AS points, max(ctid)::text AS top, coalesce(array_agg(value) FILTER (WHERE name = $2), '{}') AS sent
       FROM metric_points WHERE ctid > $1::tid`, [lastTid, latencyMetric])
    if (row?.top != null) {
      lastTid = row.top
      parentPort!.postMessage({ points: row.points, atMs, latenciesMs: row.sent.map(sent => atMs - Number(sent)) } satisfies Report)
    }
    await sleep(pollMs)
  }
}

if (!isMainThread && parentPort !== null) {
  watch(workerData as Spec).catch((error: unknown) => { parentPort!.postMessage({ error: (error as Error).message } satisfies Report) })
}
