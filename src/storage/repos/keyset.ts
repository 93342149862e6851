// The query side of src/paging.ts's time-keyed lists: newest first by a time column and then id.
import type { Knex } from 'knex'
import type { TimeKey } from '../../paging.js'

/** Orders `query` newest first by (`timeColumn`, id), from after `before`, at most `limit` rows. */
export function newestFirst (query: Knex.QueryBuilder, timeColumn: string, before: TimeKey | undefined, limit: number): Knex.QueryBuilder {
  void query.orderBy([{ column: timeColumn, order: 'desc' }, { column: 'id', order: 'desc' }]).limit(limit)
  if (before !== undefined) void query.whereRaw('(??, id) < (?::timestamptz, ?::uuid)', [timeColumn, before.at.toISOString(), before.id])
  return query
}
