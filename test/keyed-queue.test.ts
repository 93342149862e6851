import t from 'tap'
import { createKeyedQueue } from '../src/keyed-queue.js'

const delay = (ms: number): Promise<void> => new Promise(resolve => setTimeout(resolve, ms))

t.test('tasks of one key run in order, keys run concurrently, failures do not block', async (t) => {
  const queue = createKeyedQueue()
  const log: string[] = []
  const a1 = queue.run('a', async () => { await delay(30); log.push('a1'); return 1 })
  const a2 = queue.run('a', async () => { log.push('a2'); throw new Error('boom') })
  const a3 = queue.run('a', async () => { log.push('a3'); return 3 })
  const b1 = queue.run('b', async () => { log.push('b1'); return 'b' })
  t.equal(await a1, 1)
  await t.rejects(a2, /boom/)
  t.equal(await a3, 3)
  t.equal(await b1, 'b')
  t.same(log, ['b1', 'a1', 'a2', 'a3'], 'b did not wait for a; a ran in order past the failure')
  await queue.idle()
  let late = false
  void queue.run('c', async () => { await delay(20); late = true })
  await queue.idle()
  t.ok(late, 'idle waits for running tasks')
})
