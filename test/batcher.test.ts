import t from 'tap'
import { createBatcher } from '../src/batcher.js'

t.test('calls made while a batch runs go together in the next one, in order, with their own results', async (t) => {
  const batches: number[][] = []
  const double = createBatcher(async (items: number[]) => {
    batches.push(items)
    await new Promise(resolve => setTimeout(resolve, 10))
    return items.map(item => item * 2)
  }, 3)
  const results = await Promise.all([1, 2, 3, 4, 5, 6, 7].map(double))
  t.same(results, [2, 4, 6, 8, 10, 12, 14])
  t.same(batches, [[1, 2, 3], [4, 5, 6], [7]], 'batched up to the maximum size')
  t.equal(await double(8), 16, 'an idle batcher runs a single call')
})

t.test('a failing batch rejects its calls only', async (t) => {
  const check = createBatcher(async (items: number[]) => {
    if (items.includes(13)) throw new Error('unlucky batch')
    return items
  })
  await t.rejects(check(13), /unlucky batch/)
  t.equal(await check(14), 14, 'the next batch runs')
})
