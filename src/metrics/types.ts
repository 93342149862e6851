// The metrics pipeline's shared vocabulary: a validated point, a batch, and the handler interface
// that built-in and custom handlers implement (METRICS_HANDLERS). What a handler factory is given
// (the database among it) lives with the factories, in handlers/index.ts.

/** One validated metric point of one device. */
export interface MetricPoint {
  serial: string
  name: string
  value: number
  unit: string | null
  recordedAt: Date
  receivedAt: Date
}

/** Points handed to every handler together; `id` is unique, so a handler can make a retry idempotent. */
export interface MetricBatch {
  id: string
  points: readonly MetricPoint[]
}

export interface MetricsHandler {
  readonly name: string
  /**
   * Takes a batch. The pipeline calls one handler with one batch at a time and never waits for one
   * handler on behalf of another; a rejection is logged and counted, and the batch is not retried
   * by the pipeline (a handler that must not lose data retries itself, as `postgres` does).
   */
  handle (batch: MetricBatch): Promise<void>
  /**
   * A lossy handler (logger, prometheus) loses its oldest waiting batch when its backlog is full;
   * a handler that is not lossy (the default) holds the pipeline back instead, and so the devices.
   */
  readonly lossy?: boolean
  /** Flushes what it holds; called once on shutdown. */
  close? (): Promise<void>
}
