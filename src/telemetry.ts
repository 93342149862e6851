// The server's own figures, in one prom-client registry (exposed on /metrics by the REST API).
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'
import { REFUSAL_REASONS } from './auth/device-authenticator.js'
import type { GatewayStats } from './mqtt/device-gateway.js'

export function createTelemetry (options: { connectedDevices: () => number }) {
  const registry = new Registry()
  collectDefaultMetrics({ register: registry, prefix: 'shepherd_' })
  const connects = new Counter({ name: 'shepherd_device_connects_total', help: 'Device connections accepted', registers: [registry] })
  const refusals = new Counter({ name: 'shepherd_device_connect_refusals_total', help: 'Device connections refused, by reason', labelNames: ['reason'], registers: [registry] })
  for (const reason of REFUSAL_REASONS) refusals.inc({ reason }, 0)
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

  const stats: GatewayStats = {
    connectAccepted: () => { connects.inc() },
    connectRefused: (reason) => { refusals.inc({ reason }) },
    messageReceived: () => { received.inc() },
    messageDelivered: () => { delivered.inc() }
  }
  /** Fits buildHttpApp's `onResponse`. */
  const observeHttpRequest = (route: string, method: string, statusCode: number, seconds: number): void => {
    httpDuration.observe({ method, route, status_code: statusCode }, seconds)
  }
  return { registry, stats, observeHttpRequest }
}
