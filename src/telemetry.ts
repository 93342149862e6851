// The server's own figures, in one prom-client registry (exposed on /metrics by the REST API).
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client'
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
  const stats: GatewayStats = {
    connectAccepted: () => { connects.inc() },
    connectRefused: (reason) => { refusals.inc({ reason }) }
  }
  return { registry, stats }
}
