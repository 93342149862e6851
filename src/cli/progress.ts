// A one-line progress bar on stderr: redrawn in place on a terminal (at most 10 times a second),
// a plain line at each quarter otherwise (logs, CI, tests).
const WIDTH = 30
const REDRAW_MS = 100

const mib = (bytes: number): string => (bytes / 1024 / 1024).toFixed(1)

export interface ProgressBar { advance (bytes: number): void, done (): void }

export function createProgressBar (label: string, total: number, stream: { isTTY?: boolean, write (text: string): unknown } = process.stderr): ProgressBar {
  let current = 0
  let drawnAt = 0
  let lastQuarter = -1
  const line = (): string => {
    const fraction = total === 0 ? 1 : current / total
    const filled = Math.round(fraction * WIDTH)
    return `${label} [${'#'.repeat(filled)}${'.'.repeat(WIDTH - filled)}] ${Math.floor(fraction * 100)}% ${mib(current)}/${mib(total)} MiB`
  }
  const draw = (force: boolean): void => {
    if (stream.isTTY === true) {
      if (!force && Date.now() - drawnAt < REDRAW_MS) return
      drawnAt = Date.now()
      stream.write(`\r${line()}`)
      return
    }
    const quarter = total === 0 ? 4 : Math.floor(current * 4 / total)
    if (quarter > lastQuarter) {
      lastQuarter = quarter
      stream.write(`${line()}\n`)
    }
  }
  draw(true)
  return {
    advance (bytes) {
      current += bytes
      draw(false)
    },
    done () {
      current = total
      draw(true)
      if (stream.isTTY === true) stream.write('\n')
    }
  }
}
