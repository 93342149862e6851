// What every route shares: the OpenAPI document and docs page, the error shape for unknown
// routes and for failures inside the server (which must not leak internals).
import net from 'node:net'
import t from 'tap'
import { startTestServer } from '../helpers/server.js'

// the routes of contract §4 that exist so far, as OpenAPI paths
const ROUTES = [
  'get /api/health',
  'get /api/devices', 'get /api/devices/{serial}', 'patch /api/devices/{serial}', 'delete /api/devices/{serial}',
  'post /api/devices/{serial}/revoke', 'post /api/devices/{serial}/unrevoke',
  'get /api/groups', 'post /api/groups', 'get /api/groups/{id}', 'patch /api/groups/{id}', 'delete /api/groups/{id}',
  'post /api/groups/{id}/devices', 'delete /api/groups/{id}/devices/{serial}',
  'get /api/devices/{serial}/metrics',
  'post /api/devices/{serial}/commands', 'get /api/devices/{serial}/commands', 'get /api/commands/{id}',
  'post /api/groups/{id}/commands', 'get /api/groups/{id}/commands/{batch_id}',
  'post /api/firmware', 'get /api/firmware', 'get /api/firmware/{id}', 'delete /api/firmware/{id}', 'get /api/firmware/{id}/download',
  'post /api/devices/{serial}/update', 'post /api/groups/{id}/update', 'get /api/updates/{id}', 'get /api/devices/{serial}/updates',
  'get /api/groups/{id}/updates/{rollout_id}',
  'get /api/events', 'get /metrics'
]

t.test('the OpenAPI document lists every route, and the docs page is served', async (t) => {
  const ts = await startTestServer(t)
  const document = await ts.api('GET', '/api/openapi.json')
  t.equal(document.status, 200)
  t.match(document.body, { openapi: /^3\./, info: { title: 'Shepherd REST API' }, components: { securitySchemes: { bearer: { scheme: 'bearer' } } } })
  const paths = document.body.paths as Record<string, Record<string, { responses: Record<string, unknown> }>>
  const listed = Object.entries(paths).flatMap(([path, methods]) => Object.keys(methods).map(method => `${method} ${path}`))
  for (const route of ROUTES) t.ok(listed.includes(route), `${route} is documented`)
  t.notOk(listed.some(route => route.includes('/mqtt') || route.includes('openapi')), 'the WebSocket endpoint and the document itself are not API routes')
  t.ok(paths['/api/devices/{serial}']?.patch?.responses['400'], 'error answers are documented')
  for (const route of ['/api/health', '/api/firmware/{id}/download']) {
    const operation = paths[route]!.get as unknown as { security?: unknown[] }
    t.same(operation.security, [], `${route} needs no token`)
  }

  const docs = await ts.api('GET', '/docs')
  t.equal(docs.status, 200, 'the docs page with a bearer token')
  t.match(docs.text, /swagger-ui/, 'is the Swagger UI')
})

t.test('the OpenAPI document and the docs need a token (contract §4); a browser gives it as the Basic password', async (t) => {
  const ts = await startTestServer(t)
  const basic = (user: string, password: string): Record<string, string> => ({ authorization: `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}` })

  for (const token of [null, 'not-a-token']) {
    const document = await ts.api('GET', '/api/openapi.json', { token })
    t.match(document, { status: 401, body: { error: 'unauthorized' } }, `the document refuses ${token === null ? 'no' : 'a wrong'} token`)
    t.notOk(document.headers['www-authenticate'], 'and does not ask a browser to log in')
  }
  t.equal((await ts.api('GET', '/api/openapi.json', { token: null, headers: basic('me', ts.apiToken) })).status, 401, 'Basic is for the docs pages only')

  const refused = await ts.api('GET', '/docs', { token: null })
  t.match(refused, { status: 401, body: { error: 'unauthorized', message: /token as password/ } }, 'the docs page without credentials')
  t.match(refused.headers['www-authenticate'], /^Basic realm="Shepherd API docs/, 'asks the browser to log in')
  const wrong = await ts.api('GET', '/docs', { token: null, headers: basic('me', 'not-a-token') })
  t.match(wrong, { status: 401, body: { error: 'unauthorized', message: /not valid/ } }, 'a wrong password is refused')
  t.equal((await ts.api('GET', '/docs', { token: null, headers: basic('me', '') })).status, 401, 'an empty password is refused')

  const page = await ts.api('GET', '/docs/', { token: null, headers: basic('anyone', ts.apiToken) })
  t.equal(page.status, 200, 'any user name with the token as password opens the page')
  t.match(page.text, /swagger-ui/)
  const spec = await ts.api('GET', '/docs/json', { token: null, headers: basic('anyone', ts.apiToken) })
  t.match(spec, { status: 200, body: { info: { title: 'Shepherd REST API' } } }, 'and the document the page loads')
  t.equal((await ts.api('GET', '/docs/json', { token: null })).status, 401, 'which is not public either')
})

t.test('unknown routes and server failures answer the error shape, without internals', async (t) => {
  const ts = await startTestServer(t)
  const unknown = await ts.api('GET', '/api/nothing-here')
  t.match(unknown, { status: 404, body: { error: 'not_found', message: /GET \/api\/nothing-here/ } })

  // a table goes away under the server: a request that needs it fails inside
  await ts.server.db.knex.raw('ALTER TABLE groups RENAME TO groups_gone')
  t.teardown(() => ts.server.db.knex.raw('ALTER TABLE groups_gone RENAME TO groups'))
  const failed = await ts.api('GET', '/api/groups')
  t.equal(failed.status, 500)
  t.same(Object.keys(failed.body).sort(), ['error', 'message'])
  t.equal(failed.body.error, 'internal_error')
  t.notMatch(failed.text, /groups|relation|select|at /i, 'no SQL, table name or stack in the answer')
  t.ok(ts.logs.some(line => line.msg === 'request failed' && JSON.stringify(line).includes('groups')), 'the log has the cause')
})

t.test('a request Node\'s HTTP parser refuses answers the error shape too', async (t) => {
  const ts = await startTestServer(t)
  const { hostname, port } = new URL(ts.httpUrl)
  const answer = await new Promise<string>((resolve, reject) => {
    const socket = net.connect(Number(port), hostname, () => { socket.write('FOO /api/devices HTTP/1.1\r\nHost: x\r\n\r\n') })
    let text = ''
    socket.on('data', (chunk) => { text += chunk.toString() })
    socket.on('end', () => { resolve(text) })
    socket.on('error', reject)
  })
  t.match(answer, /^HTTP\/1\.1 400 /)
  const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>
  t.match(body, { error: 'invalid_request', message: /not valid HTTP/ })
})

t.test('a refused token is logged with a reason, and the token is not', async (t) => {
  const ts = await startTestServer(t)
  const response = await ts.api('GET', '/api/devices', { token: 'shp_guessing' })
  t.equal(response.status, 401)
  t.match(response.body, { error: 'unauthorized', message: /not valid/ })
  t.ok(ts.logs.some(line => line.msg === 'API request refused' && line.reason === 'unknown_token'))
  t.notOk(ts.logs.some(line => JSON.stringify(line).includes('shp_guessing')), 'the presented token is not logged')
})
