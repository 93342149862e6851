// The bound on observer password checks: at most maxConcurrent run, maxWaiting wait in order, and
// a check beyond those is refused at once without running.
import t from 'tap'
import { createLoginLimit } from '../../src/observers/login-limit.js'

function deferred (): { promise: Promise<string>, resolve (value: string): void } {
  let resolve!: (value: string) => void
  const promise = new Promise<string>(r => { resolve = r })
  return { promise, resolve }
}

t.test('runs maxConcurrent checks, queues maxWaiting in order, refuses the rest without running them', async (t) => {
  const limit = createLoginLimit({ maxConcurrent: 2, maxWaiting: 1 })
  const gates = [deferred(), deferred(), deferred(), deferred()]
  const started: number[] = []
  const attempts = gates.map(async (gate, index) => await limit.run(async () => { started.push(index); return await gate.promise }))
  await new Promise(resolve => setImmediate(resolve))
  t.same(started, [0, 1], 'two run at once')
  t.same(await attempts[3], { admitted: false, detail: '3 observer logins are being checked; try again later' }, 'the fourth is refused at once')
  gates[1]!.resolve('second')
  t.same(await attempts[1], { admitted: true, value: 'second' })
  await new Promise(resolve => setImmediate(resolve))
  t.same(started, [0, 1, 2], 'the waiting one takes the freed turn')
  gates[0]!.resolve('first')
  gates[2]!.resolve('third')
  t.same(await Promise.all([attempts[0], attempts[2]]), [{ admitted: true, value: 'first' }, { admitted: true, value: 'third' }])
  t.equal(started.includes(3), false, 'the refused check never ran')
})

t.test('a check that throws gives its turn back', async (t) => {
  const limit = createLoginLimit({ maxConcurrent: 1, maxWaiting: 0 })
  await t.rejects(limit.run(async () => { throw new Error('database down') }), /database down/)
  t.same(await limit.run(async () => 'next'), { admitted: true, value: 'next' })
})
