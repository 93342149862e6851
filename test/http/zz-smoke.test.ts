import t from 'tap'
import { startTestServer } from '../helpers/server.js'
t.test('smoke', async (t) => {
  const ts = await startTestServer(t)
  for (const [m, u, b] of [['GET', '/api/health'], ['GET', '/api/devices'], ['GET', '/api/devices?bogus=1'], ['GET', '/api/devices?limit=0'], ['GET', '/api/devices/nope'], ['PATCH', '/api/devices/nope', { nick: 1 }], ['PATCH', '/api/devices/nope', '{bad'], ['GET', '/nothing'], ['GET', '/api/openapi.json']] as const) {
    const r = await ts.api(m as any, u, { body: b })
    console.log(m, u, r.status, r.text.slice(0, 300))
  }
  const r = await ts.api('GET', '/api/devices', { token: null })
  console.log('notoken', r.status, r.text)
  console.log('docs', (await ts.api('GET', '/docs', { token: null })).status)
})
