// A custom metrics handler module for tests (METRICS_HANDLERS=<path>): written to a temp file, it
// records the batches it gets in a global of the test process (the server runs in it too).
import { randomUUID } from 'node:crypto'
import { mkdtemp, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import path from 'node:path'
import type { MetricBatch } from '../../src/metrics/types.js'

export interface Recording {
  batches: MetricBatch[]
  closed: boolean
  /** Number of handle() calls running now (a handler gets one batch at a time). */
  running: number
  maxRunning: number
}

export interface RecorderOptions {
  name?: string
  lossy?: boolean
  /** Milliseconds each batch takes. */
  delayMs?: number
  /** Every handle() rejects (or throws synchronously with 'sync'). */
  fail?: boolean | 'sync'
}

const recordings = ((globalThis as { __shepherdMetricsRecordings?: Record<string, Recording> }).__shepherdMetricsRecordings ??= {})

/** Writes a handler module; answers its path and what it records. */
export async function recordingHandler (options: RecorderOptions = {}): Promise<{ path: string, recording: Recording, points: () => MetricBatch['points'] }> {
  const key = randomUUID()
  const recording: Recording = recordings[key] = { batches: [], closed: false, running: 0, maxRunning: 0 }
  const file = path.join(await mkdtemp(path.join(tmpdir(), 'shepherd-handler-')), 'recorder.mjs')
  await writeFile(file, `
const recording = globalThis.__shepherdMetricsRecordings[${JSON.stringify(key)}]
export default function createRecorder (context) {
  if (typeof context.logger?.info !== 'function' || context.registry === undefined || context.knex === undefined) throw new Error('bad context')
  return {
    name: ${JSON.stringify(options.name ?? 'recorder')},
    lossy: ${options.lossy === true},
    handle (batch) {
      if (${JSON.stringify(options.fail ?? false)} === 'sync') throw new Error('recorder fails on purpose (sync)')
      return (async () => {
        recording.running++
        recording.maxRunning = Math.max(recording.maxRunning, recording.running)
        await new Promise(resolve => setTimeout(resolve, ${options.delayMs ?? 0}))
        recording.running--
        if (${options.fail === true}) throw new Error('recorder fails on purpose')
        recording.batches.push(batch)
      })()
    },
    async close () { recording.closed = true }
  }
}
`)
  return { path: file, recording, points: () => recording.batches.flatMap(batch => batch.points) }
}
