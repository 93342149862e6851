// The `logger` metrics handler: one debug line per point. Lossy: when the log cannot keep up, its
// oldest waiting batches are dropped rather than holding back the devices.
import type { MetricsHandlerFactory } from './context.js'

export const createLoggerHandler: MetricsHandlerFactory = ({ logger }) => ({
  name: 'logger',
  lossy: true,
  async handle (batch) {
    if (!logger.isLevelEnabled('debug')) return
    for (const point of batch.points) {
      logger.debug({
        serial: point.serial, name: point.name, value: point.value, unit: point.unit, recorded_at: point.recordedAt.toISOString()
      }, 'metric point')
    }
  }
})
