// `shepherd start`: serve until SIGINT/SIGTERM, then shut down cleanly (exit 0).
import closeWithGrace from 'close-with-grace'
import { loadConfig } from '../config.js'
import { createServer } from '../server.js'
import { parseCommand, type Output } from './main.js'
import { whileStoppable } from './stop-signals.js'

export async function start (args: string[], _output: Output): Promise<void> {
  parseCommand(args, {})
  const config = loadConfig()
  // a stop asked for while starting (migrations can take a while) is honoured once started
  let stopWhileStarting: NodeJS.Signals | undefined
  const server = await whileStoppable(createServer(config), (signal) => { stopWhileStarting = signal })
  if (stopWhileStarting !== undefined) {
    server.logger.info({ signal: stopWhileStarting }, 'shutting down (asked while starting)')
    await server.close()
    return
  }
  try {
    await server.listen()
  } catch (error) {
    await server.close()
    throw error
  }
  // like Mosquitto: SIGHUP reads the observers' password file again
  process.on('SIGHUP', () => { void server.reloadPasswordFile() })
  await new Promise<void>((resolve) => {
    closeWithGrace({ delay: 15_000, skip: ['SIGHUP'] }, async ({ signal, err }) => {
      if (err !== undefined) server.logger.error({ err }, 'shutting down after an error')
      else server.logger.info({ signal }, 'shutting down')
      await server.close()
      resolve()
    })
  })
}
