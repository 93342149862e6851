// Replay protection for device CONNECTs, keyed on (serial, timestamp): a pair is accepted once.
// Entries only need to outlive the timestamp tolerance window (older timestamps fail that check
// anyway), so memory stays bounded by the connect rate. With Redis the claim is shared by nodes.

export interface ReplayGuard {
  /** True the first time the pair is claimed within `ttlMs`; false for a replay. */
  claim (serial: string, timestamp: number, ttlMs: number): Promise<boolean>
  /** Gives a claim back: the connection that claimed it was refused after all (revoked). */
  release (serial: string, timestamp: number): Promise<void>
  close (): Promise<void>
}

export function createMemoryReplayGuard (now: () => number = Date.now): ReplayGuard {
  const expiries = new Map<string, number>()
  const prune = setInterval(() => {
    const at = now()
    for (const [key, expiry] of expiries) if (expiry <= at) expiries.delete(key)
  }, 10_000)
  prune.unref()
  return {
    async claim (serial, timestamp, ttlMs) {
      const key = `${serial}:${timestamp}`
      const expiry = expiries.get(key)
      if (expiry !== undefined && expiry > now()) return false
      expiries.set(key, now() + ttlMs)
      return true
    },
    async release (serial, timestamp) { expiries.delete(`${serial}:${timestamp}`) },
    async close () { clearInterval(prune) }
  }
}

/** The subset of an ioredis client the guard uses. */
export interface RedisSetNx {
  set (key: string, value: string, px: 'PX', ttl: number, nx: 'NX'): Promise<'OK' | null>
  del (key: string): Promise<number>
  quit (): Promise<unknown>
}

export function createRedisReplayGuard (redis: RedisSetNx): ReplayGuard {
  return {
    async claim (serial, timestamp, ttlMs) {
      return await redis.set(`shepherd:replay:${serial}:${timestamp}`, '1', 'PX', ttlMs, 'NX') === 'OK'
    },
    async release (serial, timestamp) { await redis.del(`shepherd:replay:${serial}:${timestamp}`) },
    async close () { await redis.quit() }
  }
}
