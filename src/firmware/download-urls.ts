// Signed firmware download URLs (contract §3): `<PUBLIC_URL>/api/firmware/<id>/download?expires=<unix>&signature=<hmac>`,
// the signature an HMAC-SHA256 of SECRET_KEY_BASE over the firmware id and the expiry. The URL is
// the device's only credential for the download, so it is checked in constant time.
import { createHmac, timingSafeEqual } from 'node:crypto'

export type DownloadCheck = { ok: true } | { ok: false, reason: 'invalid' | 'expired' }

export function createDownloadUrls (options: { secret: string, ttlSeconds: number, now?: () => number }) {
  const now = options.now ?? Date.now
  // a key of its own, so the same secret can sign other things without their signatures being interchangeable
  const key = createHmac('sha256', options.secret).update('shepherd firmware download').digest()
  const signature = (firmwareId: string, expires: number): Buffer =>
    createHmac('sha256', key).update(`${firmwareId}\n${expires}`).digest()

  return {
    path (firmwareId: string): string {
      const expires = Math.floor(now() / 1000) + options.ttlSeconds
      return `/api/firmware/${firmwareId}/download?expires=${expires}&signature=${signature(firmwareId, expires).toString('base64url')}`
    },

    check (firmwareId: string, expires: string | undefined, given: string | undefined): DownloadCheck {
      if (expires === undefined || given === undefined || !/^\d{1,12}$/.test(expires)) return { ok: false, reason: 'invalid' }
      const expected = signature(firmwareId, Number(expires))
      const actual = Buffer.from(given, 'base64url')
      if (actual.length !== expected.length || !timingSafeEqual(actual, expected)) return { ok: false, reason: 'invalid' }
      return Number(expires) * 1000 < now() ? { ok: false, reason: 'expired' } : { ok: true }
    }
  }
}

export type DownloadUrls = ReturnType<typeof createDownloadUrls>
