// Process entry: `shepherd <command>` (bin/shepherd and `npm start` land here).
import { runCli } from './cli/main.js'

process.exitCode = await runCli(process.argv.slice(2))
