// OTA updates of the reference device (contract §3): takes firmware offers (the `update` command's
// payload or the retained `firmware` message), downloads the image with HTTP Range resumes,
// verifies its size and sha256, reports on `update_status` and reboots into the new version.
// The simulator keeps no image: the download streams into a hash and a byte count.
import { createHash } from 'node:crypto'
import { setTimeout as sleep } from 'node:timers/promises'

export interface FirmwareOffer {
  update_id: string
  firmware_id: string | number
  version: string
  target: string
  /** Signed and expiring: a later offer of the same update may bring a fresh one. */
  url: string
  sha256: string
  size: number
  reboot?: boolean
}

export interface UpdateStatus {
  update_id: string
  status: 'downloading' | 'applying' | 'complete' | 'failed'
  progress?: number
  error?: string
}

export type DownloadResult = { ok: true } | { ok: false, error: string }

export interface DownloadOptions {
  /** Percent of the size received: 0 first, then about every 10 %, 100 last; never decreasing. */
  onProgress?: (percent: number) => void
  signal?: AbortSignal
  /** Requests that may fail (network, cut body, 5xx) before giving up; default 5. */
  attempts?: number
  /** Pause before the first retry, doubling after each; default 200 ms. */
  backoffMs?: number
}

const isText = (value: unknown): boolean => typeof value === 'string' && value !== ''
const OFFER_FIELDS: Record<Exclude<keyof FirmwareOffer, 'reboot'>, (value: unknown) => boolean> = {
  update_id: isText,
  firmware_id: value => isText(value) || Number.isSafeInteger(value),
  version: isText,
  target: isText,
  url: value => typeof value === 'string' && /^https?:\/\//.test(value),
  sha256: value => typeof value === 'string' && /^[0-9a-fA-F]{64}$/.test(value),
  size: value => Number.isSafeInteger(value) && (value as number) > 0
}

export function parseOffer (payload: unknown): { ok: true, offer: FirmwareOffer } | { ok: false, error: string } {
  const fields = (typeof payload === 'object' && payload !== null ? payload : {}) as Record<string, unknown>
  const wrong = Object.entries(OFFER_FIELDS).filter(([name, valid]) => !valid(fields[name])).map(([name]) => name)
  if (wrong.length > 0) return { ok: false, error: `invalid update offer: missing or invalid ${wrong.join(', ')}` }
  return { ok: true, offer: fields as unknown as FirmwareOffer }
}

interface Failure { error: string, fatal?: boolean, status?: number }

/**
 * Downloads `url` (or, given a function, the latest URL, asked before every request) and checks
 * it against the expected size and sha256. A request that fails or is cut short is resumed from
 * the bytes already received with `Range: bytes=<received>-`; a 4xx ends the download, except a
 * 403 when a newer URL arrived meanwhile (the old one expired), which is tried once.
 */
export async function downloadFirmware (
  url: string | (() => string),
  expected: { size: number, sha256: string },
  options: DownloadOptions = {}
): Promise<DownloadResult> {
  const latestUrl = typeof url === 'string' ? () => url : url
  const { signal, attempts = 5, backoffMs = 200 } = options
  let hash = createHash('sha256')
  let received = 0
  let reported = -1
  const progress = (): void => {
    const percent = Math.floor(received * 100 / expected.size)
    const step = percent - percent % 10
    if (step > reported) options.onProgress?.(reported = step)
  }
  const restart = (): void => { hash = createHash('sha256'); received = 0 }

  // One request for the bytes still missing; undefined when its body ended.
  const request = async (from: string): Promise<Failure | undefined> => {
    const response = await fetch(from, { headers: received > 0 ? { range: `bytes=${received}-` } : {}, signal })
    if (response.status === 206) {
      const start = /^bytes (\d+)-/.exec(response.headers.get('content-range') ?? '')?.[1]
      if (Number(start) !== received) {
        await response.body?.cancel()
        restart()
        return { error: `unexpected Content-Range ${response.headers.get('content-range')}` }
      }
    } else if (response.status === 200) {
      if (received > 0) restart() // the server ignored the Range: the whole image again
    } else {
      await response.body?.cancel()
      const fatal = response.status < 500
      return { error: `${fatal ? 'download failed: ' : ''}HTTP ${response.status}`, status: response.status, fatal }
    }
    if (response.body === null) return { error: 'no body' }
    for await (const chunk of response.body) {
      received += chunk.byteLength
      if (received > expected.size) { // returning from the loop cancels the body
        return { error: `size mismatch: expected ${expected.size} bytes, got more`, fatal: true }
      }
      hash.update(chunk)
      progress()
    }
    return undefined
  }

  progress()
  let failures = 0
  let renewed = false
  while (received < expected.size) {
    const from = latestUrl()
    let failure: Failure | undefined
    try {
      failure = await request(from)
    } catch (error) {
      if (signal?.aborted === true) return { ok: false, error: 'aborted' }
      // refused, reset or cut mid-body: resume; undici's message ('fetch failed', 'terminated') needs its cause
      const { message, cause } = error as Error & { cause?: Error }
      failure = { error: cause?.message === undefined ? message : `${message}: ${cause.message}` }
    }
    if (failure === undefined) {
      if (received < expected.size) return { ok: false, error: `size mismatch: expected ${expected.size} bytes, got ${received}` }
      break
    }
    if (failure.status === 403 && !renewed && latestUrl() !== from) {
      renewed = true
      continue
    }
    if (failure.fatal === true) return { ok: false, error: failure.error }
    if (++failures >= attempts) return { ok: false, error: `download failed after ${attempts} attempts: ${failure.error}` }
    try {
      await sleep(backoffMs * 2 ** (failures - 1), undefined, { signal })
    } catch {
      return { ok: false, error: 'aborted' }
    }
  }
  const actual = hash.digest('hex')
  if (actual !== expected.sha256.toLowerCase()) return { ok: false, error: `sha256 mismatch: expected ${expected.sha256.toLowerCase()} got ${actual}` }
  return { ok: true }
}

/** 'apply' reboots into the offered version; 'revert' reboots but comes back with the old one;
 * 'fail' reports failed after the download. */
export type UpdateBehaviour = 'apply' | 'revert' | 'fail'

export interface FirmwareUpdaterOptions {
  /** Publishes on update_status (QoS 1); resolves once the broker has it. */
  report (status: UpdateStatus): Promise<void>
  /** Reboots the device into `version`, or into its old firmware when undefined. */
  reboot (version: string | undefined): void
  behaviour?: UpdateBehaviour
}

export interface FirmwareUpdater {
  /**
   * Takes an offer; ok once it is accepted (or was before), else what is wrong with it. An offer
   * of another update than the one in progress supersedes it (the retained offer is the pending one).
   */
  offer (payload: unknown): { ok: true, updateId: string } | { ok: false, error: string }
  /** Call after every (re)connect, once info is out: reports `complete` for the update just booted into. */
  connected (): void
  /** Abandons the update in progress, silently (the device is closing). */
  close (): void
}

interface Job { offer: FirmwareOffer, url: string, cancel: AbortController }

export function createFirmwareUpdater (options: FirmwareUpdaterOptions): FirmwareUpdater {
  const behaviour = options.behaviour ?? 'apply'
  // an update arrives from the command and the retained offer, and again after reconnects
  const finished = new Set<string>()
  let current: Job | undefined
  let bootedInto: string | undefined

  const report = (updateId: string, status: Omit<UpdateStatus, 'update_id'>): Promise<void> =>
    options.report({ update_id: updateId, ...status }).catch(() => {})
  const finish = (id: string): void => {
    current = undefined
    finished.add(id)
    if (finished.size > 1000) finished.delete(finished.values().next().value!)
  }

  async function run (job: Job): Promise<void> {
    const { offer } = job
    const id = offer.update_id
    const result = await downloadFirmware(() => job.url, offer, {
      signal: job.cancel.signal,
      onProgress: (progress) => { void report(id, { status: 'downloading', progress }) }
    })
    if (job.cancel.signal.aborted) return // superseded or closed
    finish(id)
    const error = !result.ok ? result.error : behaviour === 'fail' ? 'simulated failure' : undefined
    if (error !== undefined) {
      void report(id, { status: 'failed', error })
      return
    }
    await report(id, { status: 'applying' }) // out before the reboot drops the connection
    if (behaviour === 'apply') bootedInto = id
    options.reboot(behaviour === 'apply' ? offer.version : undefined)
  }

  return {
    offer (payload) {
      const parsed = parseOffer(payload)
      if (!parsed.ok) return parsed
      const { offer } = parsed
      const id = offer.update_id
      if (finished.has(id)) return { ok: true, updateId: id }
      if (current?.offer.update_id === id) {
        current.url = offer.url // freshly signed: used from the next request on
        return { ok: true, updateId: id }
      }
      if (current !== undefined) {
        current.cancel.abort()
        void report(current.offer.update_id, { status: 'failed', error: `superseded by update ${id}` })
        finish(current.offer.update_id)
      }
      const job: Job = current = { offer, url: offer.url, cancel: new AbortController() }
      queueMicrotask(() => { void run(job) }) // after the caller's reply to the command
      return { ok: true, updateId: id }
    },
    connected () {
      if (bootedInto === undefined) return
      void report(bootedInto, { status: 'complete' })
      bootedInto = undefined
    },
    close () {
      current?.cancel.abort()
    }
  }
}
