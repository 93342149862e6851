import t from 'tap'
import { connectDevice } from '../../src/device-client/device-client.js'
import { startTestServer, eventually } from '../helpers/server.js'
import { uniqueSerial } from '../helpers/pki.js'

t.test('a device connects over WebSocket and TCP and shows in health', async (t) => {
  const ts = await startTestServer(t)
  for (const url of [ts.wsUrl, ts.mqttUrl]) {
    const identity = await ts.pki.device(uniqueSerial())
    const device = await connectDevice({ url, identity })
    const health = await eventually(async () => {
      const body = await (await fetch(`${ts.httpUrl}/api/health`)).json() as { online_devices: number }
      return body.online_devices === 1 ? body : undefined
    })
    t.same(health, { status: 'ok', online_devices: 1 })
    await device.close()
    await eventually(async () => ((await (await fetch(`${ts.httpUrl}/api/health`)).json()) as { online_devices: number }).online_devices === 0)
  }
})
