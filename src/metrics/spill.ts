// Metric batches parked on disk while the database cannot take them: JSON lines (one batch per
// line) in files under one directory, named so that their order is their age. The open file is
// fsynced when it is rotated or sealed; a line torn by a crash is skipped when read back.
import { mkdir, open, readdir, readFile, rm, stat, type FileHandle } from 'node:fs/promises'
import path from 'node:path'
import type { MetricBatch, MetricPoint } from './types.js'

export interface SpillStore {
  /** Appends batches to the open file, rotating it past the size bound. */
  append (batches: readonly MetricBatch[]): Promise<void>
  /** The oldest spilled file (sealing the open one when it is all there is), or undefined. */
  oldest (): Promise<string | undefined>
  /** The batches of a file; `skipped` counts lines that did not parse (a torn last write). */
  read (file: string): Promise<{ batches: MetricBatch[], skipped: number }>
  remove (file: string): Promise<void>
  /** Seals the open file (fsync). */
  close (): Promise<void>
  /** Bytes in spill files, the open one included. */
  readonly bytes: number
  /** True while anything is spilled. */
  readonly pending: boolean
}

type SpilledPoint = [serial: string, name: string, value: number, unit: string | null, recordedAtMs: number, receivedAtMs: number]

const encode = (batch: MetricBatch): string => JSON.stringify({
  id: batch.id,
  points: batch.points.map((p): SpilledPoint => [p.serial, p.name, p.value, p.unit, p.recordedAt.getTime(), p.receivedAt.getTime()])
}) + '\n'

function decode (line: string): MetricBatch {
  const raw = JSON.parse(line) as { id: string, points: SpilledPoint[] }
  if (typeof raw.id !== 'string' || !Array.isArray(raw.points)) throw new Error('not a spilled batch')
  return {
    id: raw.id,
    points: raw.points.map(([serial, name, value, unit, recordedAt, receivedAt]): MetricPoint =>
      ({ serial, name, value, unit, recordedAt: new Date(recordedAt), receivedAt: new Date(receivedAt) }))
  }
}

export async function openSpillStore (dir: string, options: { maxFileBytes?: number } = {}): Promise<SpillStore> {
  const maxFileBytes = options.maxFileBytes ?? 8 * 1024 * 1024
  await mkdir(dir, { recursive: true })
  const sealed: string[] = [] // oldest first
  const sizes = new Map<string, number>()
  for (const name of (await readdir(dir)).filter(name => name.endsWith('.jsonl')).sort()) {
    const file = path.join(dir, name)
    sealed.push(file)
    sizes.set(file, (await stat(file)).size)
  }
  let current: { file: string, handle: FileHandle } | undefined
  let bytes = [...sizes.values()].reduce((sum, size) => sum + size, 0)
  let sequence = 0

  // every operation runs alone, in call order
  let chain: Promise<unknown> = Promise.resolve()
  const serialized = <T>(operation: () => Promise<T>): Promise<T> => {
    const result = chain.then(operation)
    chain = result.catch(() => {})
    return result
  }

  async function seal (): Promise<void> {
    if (current === undefined) return
    const { file, handle } = current
    current = undefined
    await handle.sync()
    await handle.close()
    sealed.push(file)
  }

  return {
    append: (batches) => serialized(async () => {
      const text = batches.map(encode).join('')
      const size = Buffer.byteLength(text)
      if (current !== undefined && sizes.get(current.file)! + size > maxFileBytes) await seal()
      if (current === undefined) {
        // time first, so files sort by age across restarts too
        const file = path.join(dir, `${String(Date.now()).padStart(15, '0')}-${String(sequence++).padStart(6, '0')}.jsonl`)
        current = { file, handle: await open(file, 'a', 0o600) }
        sizes.set(file, 0)
      }
      await current.handle.write(text)
      sizes.set(current.file, sizes.get(current.file)! + size)
      bytes += size
    }),

    oldest: () => serialized(async () => {
      if (sealed.length === 0) await seal()
      return sealed[0]
    }),

    async read (file) {
      const batches: MetricBatch[] = []
      let skipped = 0
      for (const line of (await readFile(file, 'utf8')).split('\n')) {
        if (line === '') continue
        try { batches.push(decode(line)) } catch { skipped += 1 }
      }
      return { batches, skipped }
    },

    remove: (file) => serialized(async () => {
      await rm(file, { force: true })
      const index = sealed.indexOf(file)
      if (index >= 0) sealed.splice(index, 1)
      bytes -= sizes.get(file) ?? 0
      sizes.delete(file)
    }),

    close: () => serialized(seal),

    get bytes () { return bytes },
    get pending () { return sealed.length > 0 || current !== undefined }
  }
}
