// SIGINT and SIGTERM while a CLI command works on something that must not be cut off midway (a
// server starting, an upload being staged): `onStop` is told instead of the process being killed.

export async function whileStoppable<T> (work: Promise<T>, onStop: (signal: NodeJS.Signals) => void): Promise<T> {
  process.once('SIGINT', onStop)
  process.once('SIGTERM', onStop)
  try {
    return await work
  } finally {
    process.off('SIGINT', onStop)
    process.off('SIGTERM', onStop)
  }
}
