// The server's own figures, in one prom-client registry (exposed on /metrics by the REST API).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { REFUSAL_REASONS } from './auth/device-authenticator.js'
import { OBSERVER_REFUSAL_CODES } from './observers/acl.js'
import type { GatewayStats } from './mqtt/device-gateway.js'
import { DROP_REASONS, type PipelineState, type PipelineStats } from './metrics/pipeline.js'
import { PAYLOAD_REJECTIONS, POINT_REJECTIONS } from './metrics/points.js'

/** Every reason a refused connection is counted under in shepherd_device_connect_refusals_total: a closed set, all exported from the start. */
export const CONNECT_REFUSAL_REASONS = [
  ...REFUSAL_REASONS,
  ...Object.keys(OBSERVER_REFUSAL_CODES) as Array<keyof typeof OBSERVER_REFUSAL_CODES>,
  'empty_client_id_with_session',
  'packet_too_large',
  'too_much_before_connect'
] as const
export type ConnectRefusalReason = typeof CONNECT_REFUSAL_REASONS[number]

export function createTelemetry (options: { connectedDevices: () => number, metricsPipeline?: () => PipelineState | undefined }) {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'shepherd_' })
  const connects = new Counter({ name: 'shepherd_device_connects_total', help: 'Device connections accepted', registers: [registry] })
  const refusals = new Counter({ name: 'shepherd_device_connect_refusals_total', help: 'Connections refused (devices and observers), by reason', labelNames: ['reason'], registers: [registry] })
  for (const reason of CONNECT_REFUSAL_REASONS) refusals.inc({ reason }, 0)
  new Gauge({ // eslint-disable-line no-new
    name: 'shepherd_connected_devices', help: 'Devices connected to this node', registers: [registry],
    collect () { this.set(options.connectedDevices()) }
  })
  const received = new Counter({ name: 'shepherd_mqtt_messages_received_total', help: 'MQTT PUBLISH packets received from clients', registers: [registry] })
  const delivered = new Counter({ name: 'shepherd_mqtt_messages_delivered_total', help: 'MQTT messages delivered to clients', registers: [registry] })
  const httpDuration = new Histogram({
    name: 'shepherd_http_request_duration_seconds',
    help: 'HTTP request durations, by method, route pattern and status code',
    labelNames: ['method', 'route', 'status_code'],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry]
  })

  // --- metrics ingestion (src/metrics/pipeline.ts) ---
  const counter = (name: string, help: string, labelNames: string[] = []): Counter => new Counter({ name, help, labelNames, registers: [registry] })
  const pointsAccepted = counter('shepherd_metrics_points_accepted_total', 'Metric points validated and queued')
  const pointsRejected = counter('shepherd_metrics_points_rejected_total', 'Metric points dropped as invalid, by reason', ['reason'])
  for (const reason of POINT_REJECTIONS) pointsRejected.inc({ reason }, 0)
  const payloadsRejected = counter('shepherd_metrics_payloads_rejected_total', 'Metrics messages refused as a whole, by reason', ['reason'])
  for (const reason of PAYLOAD_REJECTIONS) payloadsRejected.inc({ reason }, 0)
  const pointsDropped = counter('shepherd_metrics_points_dropped_total', 'Valid metric points dropped by backpressure, by reason', ['reason'])
  for (const reason of DROP_REASONS) pointsDropped.inc({ reason }, 0)
  const overloadDisconnects = counter('shepherd_metrics_overload_disconnects_total', 'Devices disconnected without acknowledging a QoS 1 metrics publish, as held publishes were at their cap')
  const handlerFailures = counter('shepherd_metrics_handler_failures_total', 'Metric batches a handler failed on, by handler', ['handler'])
  const handlerDropped = counter('shepherd_metrics_handler_batches_dropped_total', 'Metric batches a lossy handler dropped from its full backlog, by handler', ['handler'])
  const handlerDuration = new Histogram({
    name: 'shepherd_metrics_handler_duration_seconds',
    help: 'Time a metrics handler took for one batch, by handler',
    labelNames: ['handler'],
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
    registers: [registry]
  })
  const pipelineGauge = (name: string, help: string, read: (state: PipelineState) => number): void => {
    new Gauge({ // eslint-disable-line no-new
      name, help, registers: [registry],
      collect () { this.set(read(options.metricsPipeline?.() ?? { queuedPoints: 0, heldPublishes: 0, saturated: false })) }
    })
  }
  pipelineGauge('shepherd_metrics_queue_points', 'Metric points queued, not yet handed to the handlers', s => s.queuedPoints)
  pipelineGauge('shepherd_metrics_held_publishes', 'Metrics publishes held back (not yet acknowledged) while the pipeline is saturated', s => s.heldPublishes)
  pipelineGauge('shepherd_metrics_saturated', '1 while the metrics pipeline is saturated (devices are slowed, QoS 0 points dropped)', s => s.saturated ? 1 : 0)
  const metricsStats: PipelineStats = {
    pointsAccepted: (count) => { pointsAccepted.inc(count) },
    pointsRejected: (reason, count) => { pointsRejected.inc({ reason }, count) },
    payloadRejected: (reason) => { payloadsRejected.inc({ reason }) },
    pointsDropped: (reason, count) => { pointsDropped.inc({ reason }, count) },
    overloadDisconnect: () => { overloadDisconnects.inc() },
    handlerRan: (handler, seconds, failed) => {
      handlerDuration.observe({ handler }, seconds)
      if (failed) handlerFailures.inc({ handler })
    },
    handlerBatchDropped: (handler) => { handlerDropped.inc({ handler }) }
  }
  // --- end of metrics ingestion ---

  // plain numbers too, for the $SYS topics
  const messages = { received: 0, sent: 0 }
  const stats: GatewayStats = {
    connectAccepted: () => { connects.inc() },
    connectRefused: (reason) => { refusals.inc({ reason }) },
    messageReceived: () => { received.inc(); messages.received++ },
    messageDelivered: () => { delivered.inc(); messages.sent++ }
  }
  /** Fits buildHttpApp's `onResponse`. */
  const observeHttpRequest = (route: string, method: string, statusCode: number, seconds: number): void => {
    httpDuration.observe({ method, route, status_code: statusCode }, seconds)
  }
  return { registry, stats, metricsStats, observeHttpRequest, messageCounts: (): Readonly<typeof messages> => messages }
}
