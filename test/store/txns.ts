/** Txn shapes shared by the store tests. */
import type { Op } from '../../src/types.js';
/** A txn branch writing `k` more than once: put + fromKey delete, the reverse, both, nested txns. */
export function twice(k: string, shape: number): Op[] {
  const put: Op = { type: 'put', key: k, value: `t${shape}` };
  const from: Op = { type: 'delete', key: k, options: { fromKey: true } };
  const nested = (op: Op): Op => ({ type: 'txn', txn: { compare: [], success: [op], failure: [] } });
  switch (shape) {
    case 0:
      return [put, from];
    case 1:
      return [from, put];
    case 2:
      return [from, put, from];
    default:
      return [nested(put), nested({ type: 'delete', key: k })];
  }
}
