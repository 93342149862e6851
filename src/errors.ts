// Typed errors for infrastructure and usage problems. Expected domain failures (a refused
// device, a bad request) are discriminated unions, not exceptions.

/** Settings that cannot be used; `problems` names every variable at fault. */
export class ConfigError extends Error {
  readonly problems: readonly string[]
  constructor (problems: readonly string[]) {
    super(`invalid configuration:\n  - ${problems.join('\n  - ')}`)
    this.name = 'ConfigError'
    this.problems = problems
  }
}

/** The server cannot start; the message says which setting or file to change. */
export class StartupError extends Error {
  constructor (message: string, options?: { cause?: unknown }) {
    super(message, options)
    this.name = 'StartupError'
  }
}

/** A CLI invocation the user must correct (exit status 2, with help text). */
export class UsageError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'UsageError'
  }
}

/** A CLI command that failed for a reason the message explains (exit status 1). */
export class CommandError extends Error {
  constructor (message: string) {
    super(message)
    this.name = 'CommandError'
  }
}
