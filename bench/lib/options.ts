// Command-line checks shared by the benchmarks: a bad option prints why and the usage line, and
// exits 64 (EX_USAGE) before anything starts.

export interface OptionChecks {
  /** Prints why and the usage line, exits 64. */
  usage (message: string): never
  /** `raw` as an integer from `min` (default 1) to `max`, or the usage message naming `--name`. */
  integer (name: string, raw: string, max: number, min?: number): number
}

export function optionChecks (usageLine: string): OptionChecks {
  const usage = (message: string): never => {
    console.error(`${message}\nusage: ${usageLine}`)
    process.exit(64)
  }
  const integer = (name: string, raw: string, max: number, min = 1): number => {
    const value = Number(raw)
    if (!/^\d+$/.test(raw) || value < min || value > max) usage(`--${name} must be an integer from ${min} to ${max}`)
    return value
  }
  return { usage, integer }
}
