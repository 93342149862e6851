// Keyset paging for lists: a page is fetched with one row more than asked, and the cursor is the
// last row's sort key (base64url, opaque to clients), stable under inserts and deletes.
import { hasNul } from './json-safety.js'

export interface Page<T> { items: T[], next_cursor: string | null }

export class InvalidCursor extends Error {
  constructor () { super('cursor is not one this server issued') }
}

const encodeCursor = (key: string): string => Buffer.from(key, 'utf8').toString('base64url')

/** The sort key a cursor stands for; throws InvalidCursor for one this server did not issue. */
export function afterCursor (cursor: string | undefined): string | undefined {
  if (cursor === undefined) return undefined
  const key = Buffer.from(cursor, 'base64url').toString('utf8')
  if (key === '' || hasNul(key) || encodeCursor(key) !== cursor) throw new InvalidCursor()
  return key
}

/** Turns `limit + 1` fetched rows into a page of `limit` and the cursor to the next one. */
export function pageOf<T> (rows: T[], limit: number, keyOf: (row: T) => string): Page<T> {
  const items = rows.slice(0, limit)
  return { items, next_cursor: rows.length > limit ? encodeCursor(keyOf(items.at(-1)!)) : null }
}

/** A position in a list ordered newest first by a time and then a uuid. */
export interface TimeKey { at: Date, id: string }

function beforeTimeKey (cursor: string | undefined): TimeKey | undefined {
  const key = afterCursor(cursor)
  if (key === undefined) return undefined
  const match = /^(\d{1,15})\|([0-9a-f-]{36})$/.exec(key)
  if (match === null) throw new InvalidCursor()
  return { at: new Date(Number(match[1])), id: match[2]! }
}

/**
 * One page of a list ordered newest first by (`timeOf`, id): `read` is asked for the rows before
 * the cursor's position, one more than the page holds. Throws InvalidCursor for a cursor this
 * server did not issue.
 */
export async function pageByTime<T extends { id: string }> (
  cursor: string | undefined, limit: number, timeOf: (row: T) => Date, read: (before: TimeKey | undefined, rows: number) => Promise<T[]>
): Promise<Page<T>> {
  return pageOf(await read(beforeTimeKey(cursor), limit + 1), limit, row => `${timeOf(row).getTime()}|${row.id}`)
}
