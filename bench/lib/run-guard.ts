// Keeps a benchmark bounded in time: after --timeout seconds, or on Ctrl-C, it says what it was
// doing, prints the figures it has, cleans up (brokers, databases, files) and exits 2. Every 30 s
// it prints the current phase, so a slow run shows where it is.
import { loadAverage } from './environment.js'
export interface RunGuard {
  /** What the run is doing now, for the messages above. */
  phase: string
  /** The run is over: no deadline any more. */
  finish (): void
  /** Runs the benchmark: then the end's load average, clean-up and the end of the deadline; on a failure, what it was doing, clean-up and exit 1. */
  run (main: () => Promise<void>): Promise<void>
}

export function guardRun (options: { timeoutSeconds: number, reportPartial: () => boolean, cleanUp: () => Promise<void> }): RunGuard {
  const guard: RunGuard = {
    phase: 'starting',
    finish: () => { clearTimeout(deadline); clearInterval(ticker) },
    async run (main) {
      try {
        await main()
        console.log(`load average at the end (1/5/15 min): ${loadAverage()}`)
        guard.phase = 'cleaning up'
        await options.cleanUp()
        guard.finish()
      } catch (error) {
        console.error(`\nfailed while ${guard.phase}: ${(error as Error).stack ?? String(error)}`)
        await options.cleanUp()
        process.exit(1)
      }
    }
  }
  const abort = (why: string): void => {
    console.error(`\naborted (${why}) while ${guard.phase}`)
    if (!options.reportPartial()) console.error('no figures for this run')
    setTimeout(() => process.exit(2), 15_000).unref()
    void options.cleanUp().finally(() => process.exit(2))
  }
  const deadline = setTimeout(() => { abort(`the run exceeded --timeout ${options.timeoutSeconds} s`) }, options.timeoutSeconds * 1000)
  process.once('SIGINT', () => { abort('interrupted') })
  const ticker = setInterval(() => { console.error(`... ${guard.phase}`) }, 30_000)
  ticker.unref()
  return guard
}
