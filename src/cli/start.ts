// `shepherd start`: serve until SIGINT/SIGTERM, then shut down cleanly (exit 0).
import closeWithGrace from 'close-with-grace'
import { loadConfig } from '../config.js'
import { createServer } from '../server.js'
import { parseCommand, type Output } from './main.js'

export async function start (args: string[], _output: Output): Promise<void> {
  parseCommand(args, {})
  const config = loadConfig()
  // a stop asked for while starting (migrations can take a while) is honoured once started
  let stopWhileStarting: NodeJS.Signals | undefined
  const remember = (signal: NodeJS.Signals): void => { stopWhileStarting = signal }
  process.once('SIGINT', remember)
  process.once('SIGTERM', remember)
  const server = await createServer(config).finally(() => {
    process.off('SIGINT', remember)
    process.off('SIGTERM', remember)
  })
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
