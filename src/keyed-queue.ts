// Runs tasks one after another per key (a device serial), in the order they were queued, while
// different keys run concurrently. A failing task does not stop the ones queued after it.

export interface KeyedQueue {
  /** Queues `task` after every earlier task of `key`; resolves or rejects with its result. */
  run<T> (key: string, task: () => Promise<T>): Promise<T>
  /** Resolves when no task is queued or running. */
  idle (): Promise<void>
}

export function createKeyedQueue (): KeyedQueue {
  const tails = new Map<string, Promise<unknown>>()
  return {
    run (key, task) {
      const result = (tails.get(key) ?? Promise.resolve()).then(task)
      const tail = result.catch(() => {})
      tails.set(key, tail)
      void tail.then(() => { if (tails.get(key) === tail) tails.delete(key) })
      return result
    },
    async idle () {
      while (tails.size > 0) await Promise.all(tails.values())
    }
  }
}
