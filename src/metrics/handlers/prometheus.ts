// The `prometheus` metrics handler: the latest value of every device metric as a gauge on /metrics,
// `shepherd_device_metric{serial,name}` (latest by recorded_at). At most `maxSeries` series
// (METRICS_PROMETHEUS_MAX_SERIES): points of further series are dropped and counted, so a fleet
// inventing metric names cannot grow the scrape without bound. Lossy, like every gauge.
import { Counter, Gauge } from 'prom-client'
import type { MetricsHandlerFactory } from './context.js'

export function prometheusHandler (maxSeries: number): MetricsHandlerFactory {
  return ({ registry, logger }) => {
    const gauge = new Gauge({
      name: 'shepherd_device_metric',
      help: 'Latest value of a device metric (by recorded_at), from the devices\' metrics topics',
      labelNames: ['serial', 'name'],
      registers: [registry]
    })
    const dropped = new Counter({
      name: 'shepherd_device_metric_points_dropped_total',
      help: 'Metric points not exported because shepherd_device_metric reached METRICS_PROMETHEUS_MAX_SERIES',
      registers: [registry]
    })
    dropped.inc(0)
    /** recorded_at (ms) of each series' value; names and serials hold no control characters. */
    const latest = new Map<string, number>()
    let warned = false

    return {
      name: 'prometheus',
      lossy: true,
      async handle (batch) {
        for (const { serial, name, value, recordedAt } of batch.points) {
          const key = `${serial}\u0000${name}`
          const at = recordedAt.getTime()
          const previous = latest.get(key)
          if (previous === undefined && latest.size >= maxSeries) {
            dropped.inc()
            if (!warned) logger.warn({ maxSeries }, 'shepherd_device_metric reached METRICS_PROMETHEUS_MAX_SERIES; points of new series are dropped')
            warned = true
            continue
          }
          if (previous !== undefined && previous > at) continue
          latest.set(key, at)
          gauge.set({ serial, name }, value)
        }
      }
    }
  }
}
