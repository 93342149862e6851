// The firmware store (contract §4): upload (the file is the request body, streamed to storage),
// list, get, delete; and the signed download devices use, public (the URL is the credential) and
// resumable with HTTP Range.
import type { FastifyPluginAsync } from 'fastify'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import parseRange from 'range-parser'
import { Type, type Static } from 'typebox'
import type { FirmwareStore } from '../../firmware/firmware-store.js'
import type { DownloadUrls } from '../../firmware/download-urls.js'
import { FirmwareTooLarge, type Firmware } from '../../firmware/types.js'
import { ApiError, notFound } from '../api-errors.js'
import { PageQuery, errors, pageSchema } from '../schemas.js'

export const FirmwareView = Type.Object({
  id: Type.String({ format: 'uuid' }),
  version: Type.String({ description: 'SemVer' }),
  target: Type.String({ description: 'the devices\' firmware_target it is for' }),
  application: Type.Union([Type.String(), Type.Null()]),
  sha256: Type.String({ description: 'lowercase hex, computed on upload' }),
  size: Type.Integer({ description: 'bytes' }),
  created_at: Type.String({ format: 'date-time' })
}, { $id: 'Firmware' })

const UploadQuery = Type.Object({
  version: Type.String({ maxLength: 64, description: 'SemVer, e.g. 1.4.0' }),
  target: Type.String({ maxLength: 64 }),
  application: Type.Optional(Type.String({ maxLength: 64 }))
}, { additionalProperties: false })

const FirmwareParams = Type.Object({ id: Type.String({ format: 'uuid' }) })
const ListQuery = Type.Object({ target: Type.Optional(Type.String({ maxLength: 64 })), ...PageQuery }, { additionalProperties: false })
const DownloadQuery = Type.Object({ expires: Type.Optional(Type.String()), signature: Type.Optional(Type.String()) })

export const firmwareView = (firmware: Firmware): Static<typeof FirmwareView> => ({
  id: firmware.id, version: firmware.version, target: firmware.target, application: firmware.application,
  sha256: firmware.sha256, size: firmware.size, created_at: firmware.created_at.toISOString()
})

export function firmwareRoutes (deps: { store: FirmwareStore, urls: DownloadUrls, maxBytes: number }): FastifyPluginAsync {
  const { store, urls, maxBytes } = deps
  return async (plain) => {
    const app = plain.withTypeProvider<TypeBoxTypeProvider>()
    const tags = ['firmware']
    // any body, of any media type, is a firmware file: handed over unread, as a stream
    app.removeAllContentTypeParsers()
    app.addContentTypeParser('*', (_request, payload, done) => { done(null, payload) })

    app.post('/api/firmware', {
      schema: {
        summary: 'Upload a firmware file (the request body); sha256 and size are computed as it streams in',
        tags, querystring: UploadQuery, response: { 201: FirmwareView, ...errors(400, 401, 409, 413) }
      }
    }, async (request, reply) => {
      const declared = Number(request.headers['content-length'])
      if (declared > maxBytes) {
        void reply.header('connection', 'close') // rather than read and discard the body that follows
        throw new ApiError('payload_too_large', `firmware files are limited to ${maxBytes} bytes (FIRMWARE_MAX_SIZE)`)
      }
      let result
      try {
        result = await store.add(request.query, request.raw)
      } catch (error) {
        if (error instanceof FirmwareTooLarge) {
          // stop reading the rest of an oversized body
          void reply.header('connection', 'close')
          throw new ApiError('payload_too_large', error.message)
        }
        throw error
      }
      if (!result.ok) {
        if (result.reason === 'invalid') throw new ApiError('invalid_request', result.message, result.field)
        throw new ApiError('conflict', result.message)
      }
      return await reply.status(201).send(firmwareView(result.firmware))
    })

    app.get('/api/firmware', {
      schema: { summary: 'Stored firmware, newest first', tags, querystring: ListQuery, response: { 200: pageSchema(FirmwareView), ...errors(400, 401) } }
    }, async (request) => {
      const { limit = 100, cursor, target } = request.query
      const page = await store.list({ target, cursor, limit })
      return { items: page.items.map(firmwareView), next_cursor: page.next_cursor }
    })

    app.get('/api/firmware/:id', {
      schema: { summary: 'One firmware', tags, params: FirmwareParams, response: { 200: FirmwareView, ...errors(400, 401, 404) } }
    }, async (request) => {
      const firmware = await store.get(request.params.id)
      if (firmware === undefined) throw notFound(`firmware ${request.params.id}`)
      return firmwareView(firmware)
    })

    app.delete('/api/firmware/:id', {
      schema: {
        summary: 'Delete a firmware and its file (refused while an update in progress uses it; finished updates keep their record)',
        tags, params: FirmwareParams, response: { 204: Type.Null(), ...errors(400, 401, 404, 409) }
      }
    }, async (request, reply) => {
      const outcome = await store.remove(request.params.id)
      if (outcome === 'not_found') throw notFound(`firmware ${request.params.id}`)
      if (outcome === 'in_use') throw new ApiError('conflict', `firmware ${request.params.id} is being installed by an update in progress; delete it once the update is finished`)
      return await reply.status(204).send(null)
    })

    app.get('/api/firmware/:id/download', {
      config: { public: true },
      schema: {
        summary: 'Download a firmware file with a signed URL (from an update offer); supports Range requests',
        security: [],
        tags, params: FirmwareParams, querystring: DownloadQuery,
        response: { 200: Type.Unknown({ description: 'the file' }), 206: Type.Unknown({ description: 'the requested range' }), ...errors(403, 404, 416) }
      }
    }, async (request, reply) => {
      const { id } = request.params
      const check = urls.check(id, request.query.expires, request.query.signature)
      if (!check.ok) {
        request.log.warn({ firmware: id, reason: check.reason }, 'firmware download refused')
        throw new ApiError('forbidden', check.reason === 'expired' ? 'this download URL has expired; the device gets a fresh one with its next offer' : 'this download URL is not valid (its signature does not match)')
      }
      const firmware = await store.get(id)
      if (firmware === undefined) throw notFound(`firmware ${id}`)
      const etag = `"${firmware.sha256}"`
      void reply.header('accept-ranges', 'bytes').header('etag', etag)
      const rangeHeader = request.headers.range
      const ifRange = request.headers['if-range']
      if (rangeHeader !== undefined && (ifRange === undefined || ifRange === etag)) {
        const ranges = parseRange(firmware.size, rangeHeader, { combine: true })
        if (ranges === -1) {
          void reply.header('content-range', `bytes */${firmware.size}`)
          throw new ApiError('range_not_satisfiable', `the range ${rangeHeader} is outside the file's ${firmware.size} bytes`)
        }
        // a malformed header (-2), a unit other than bytes, or several ranges: the whole file, as RFC 9110 allows
        if (ranges !== -2 && ranges.type === 'bytes' && ranges.length === 1) {
          const { start, end } = ranges[0]!
          const body = await store.read(firmware, { start, end })
          return await reply.status(206).header('content-type', 'application/octet-stream')
            .header('content-range', `bytes ${start}-${end}/${firmware.size}`).header('content-length', end - start + 1).send(body)
        }
      }
      const body = firmware.size === 0 ? '' : await store.read(firmware)
      return await reply.header('content-type', 'application/octet-stream').header('content-length', firmware.size).send(body)
    })
  }
}
