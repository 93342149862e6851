// Formatting and statistics shared by the benchmark reports.

export const mib = (bytes: number | null): string => bytes === null ? 'n/a' : (bytes / 2 ** 20).toFixed(0)
export const thousands = (value: number): string => Math.round(value).toLocaleString('en-US')

/** Nearest-rank percentile of ascending `sorted`. */
export function percentile (sorted: readonly number[], p: number): number {
  return sorted.length === 0 ? NaN : sorted[Math.max(0, Math.ceil(p / 100 * sorted.length) - 1)]!
}
