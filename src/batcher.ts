// Turns many single calls into few batched ones: calls made within a short window (5 ms), or
// while a batch is running, go together in the next batch. Under a connect storm one database
// statement serves hundreds of devices — on the embedded PGlite the fixed cost of a statement
// dominates, and the window cut the server's CPU per connect by about a third (bench/connect.ts);
// when idle, a call waits at most the window.

const WINDOW_MS = 5

export function createBatcher<I, O> (runBatch: (items: I[]) => Promise<O[]>, maxBatchSize = 500): (item: I) => Promise<O> {
  let pending: Array<{ item: I, resolve: (value: O) => void, reject: (error: unknown) => void }> = []
  let running = false

  function schedule (): void {
    if (running || pending.length === 0) return
    running = true
    setTimeout(() => { void flush() }, WINDOW_MS)
  }

  async function flush (): Promise<void> {
    const batch = pending.slice(0, maxBatchSize)
    pending = pending.slice(batch.length)
    try {
      const results = await runBatch(batch.map(entry => entry.item))
      batch.forEach((entry, i) => { entry.resolve(results[i] as O) })
    } catch (error) {
      for (const entry of batch) entry.reject(error)
    } finally {
      running = false
      schedule()
    }
  }

  return (item) => new Promise<O>((resolve, reject) => {
    pending.push({ item, resolve, reject })
    schedule()
  })
}
