// Bounds what observer logins can cost the server. Every password check is a deliberately slow
// hash (scrypt: ~50 ms and 16 MiB; mosquitto_passwd's PBKDF2 or SHA-512 rounds) on libuv's thread
// pool, which file reads (firmware downloads, metric spill files) share, and anyone who reaches the
// MQTT port may ask for one. So at most `maxConcurrent` checks run at once and `maxWaiting` more
// wait their turn; a login beyond those is refused at once, without a check.
// Not per address: behind a load balancer every login comes from the same one.

export interface LoginLimitOptions {
  /** Password checks running at once. Default 2 (of the thread pool's 4). */
  maxConcurrent?: number
  /** Password checks waiting for a turn. Default 100. */
  maxWaiting?: number
}

export type LimitedCheck<T> = { admitted: true, value: T } | { admitted: false, detail: string }

export interface LoginLimit {
  /** Runs `check` now, after the checks ahead of it, or not at all when too many are waiting. */
  run<T> (check: () => Promise<T>): Promise<LimitedCheck<T>>
}

export function createLoginLimit (options: LoginLimitOptions = {}): LoginLimit {
  const maxConcurrent = options.maxConcurrent ?? 2
  const maxWaiting = options.maxWaiting ?? 100
  let running = 0
  const waiting: Array<() => void> = []

  function release (): void {
    const next = waiting.shift()
    if (next !== undefined) next() // the turn passes straight to the next in line
    else running -= 1
  }

  return {
    async run (check) {
      if (running < maxConcurrent) running += 1
      else if (waiting.length >= maxWaiting) {
        return { admitted: false, detail: `${running + waiting.length} observer logins are being checked; try again later` }
      } else {
        await new Promise<void>(resolve => { waiting.push(resolve) })
      }
      try {
        return { admitted: true, value: await check() }
      } finally {
        release()
      }
    }
  }
}
