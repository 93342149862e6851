// Turns many single calls into few batched ones: calls made while a batch is running (or in the
// same event-loop turn) wait and go together in the next batch. Under a connect storm this makes
// one database statement serve hundreds of devices; when idle, a call runs on the next turn.

export function createBatcher<I, O> (runBatch: (items: I[]) => Promise<O[]>, maxBatchSize = 500): (item: I) => Promise<O> {
  let pending: Array<{ item: I, resolve: (value: O) => void, reject: (error: unknown) => void }> = []
  let running = false

  function schedule (): void {
    if (running || pending.length === 0) return
    running = true
    setImmediate(() => { void flush() })
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
