// A reader of GET /api/events over a real HTTP connection: opens the stream and parses its
// Server-Sent Events frames as they arrive.
import type { Test } from 'tap'
import http from 'node:http'
import { once } from 'node:events'
import { eventually, type TestServer } from './server.js'

export interface Frame { event?: string, data?: any, comment?: string } // eslint-disable-line @typescript-eslint/no-explicit-any

export interface EventStream {
  status: number
  headers: http.IncomingHttpHeaders
  /** Parsed frames received so far (200), or the error body (otherwise). */
  frames: Frame[]
  body: any // eslint-disable-line @typescript-eslint/no-explicit-any
  ended: Promise<void>
  waitFor (what: string, match: (frame: Frame) => boolean, timeoutMs?: number): Promise<Frame>
  close (): void
}

function parseFrame (block: string): Frame {
  const frame: Frame = {}
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) frame.comment = line.slice(1).trim()
    else if (line.startsWith('event: ')) frame.event = line.slice('event: '.length)
    else if (line.startsWith('data: ')) frame.data = JSON.parse(line.slice('data: '.length))
  }
  return frame
}

/** Opens a real HTTP request to /api/events (the test token unless `token` says otherwise). */
export async function openEvents (t: Test, ts: TestServer, query = '', token: string | null = ts.apiToken): Promise<EventStream> {
  const request = http.get(`${ts.httpUrl}/api/events${query}`, { headers: token === null ? {} : { authorization: `Bearer ${token}` } })
  t.teardown(() => { request.destroy() })
  const [response] = await once(request, 'response') as [http.IncomingMessage]
  response.setEncoding('utf8')
  const frames: Frame[] = []
  let text = ''
  response.on('data', (chunk: string) => {
    text += chunk
    if (response.statusCode !== 200) return
    for (let end = text.indexOf('\n\n'); end >= 0; end = text.indexOf('\n\n')) {
      frames.push(parseFrame(text.slice(0, end)))
      text = text.slice(end + 2)
    }
  })
  const ended = new Promise<void>(resolve => { response.once('end', resolve); response.once('close', resolve) })
  if (response.statusCode !== 200) await ended
  return {
    status: response.statusCode ?? 0,
    headers: response.headers,
    frames,
    body: response.statusCode === 200 ? undefined : JSON.parse(text),
    ended,
    waitFor: async (what, match, timeoutMs = 5000) => await eventually(() => frames.find(match), timeoutMs, what),
    close: () => { request.destroy() }
  }
}

export const isEvent = (type: string, serial: string) => (frame: Frame): boolean => frame.event === type && frame.data?.serial === serial
