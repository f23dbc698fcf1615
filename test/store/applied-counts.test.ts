/**
 * What the store counts for etcd_mvcc_put_total / etcd_mvcc_delete_total and
 * etcd_debugging_mvcc_keys_total, as etcd 3.4 counts them: one per Put and one per DeleteRange
 * operation applied (mvcc/metrics_txn.go), whatever a delete removed; a lease revoke deletes each
 * attached key on its own; the keys gauge is the live keys (up at creation, down at the
 * tombstone: mvcc/key_index.go).
 */
import { describe, expect, it } from 'vitest';
import { Store } from '../../backends/raft/store/store.js';

const b = (s: string) => new TextEncoder().encode(s);

describe('store counts for the mvcc metrics', () => {
  it('counts operations as etcd does, and live keys', () => {
    const s = new Store({ minTtlSeconds: 1 });
    s.applyPut(b('k'), b('v'));
    s.applyPut(b('k'), b('v2'));
    expect(s.applied).toEqual({ puts: 2, deletes: 0 });
    expect(s.mvcc.liveKeys()).toBe(1);
    // A delete that finds nothing is still one DeleteRange.
    s.applyDelete(b('missing'));
    s.applyPut(b('a1'), b('v'));
    s.applyPut(b('a2'), b('v'));
    expect(s.mvcc.liveKeys()).toBe(3);
    // One range delete of two keys: one delete.
    s.applyDelete(b('a'), { prefix: true });
    expect(s.applied).toEqual({ puts: 4, deletes: 2 });
    expect(s.mvcc.liveKeys()).toBe(1);
    // A txn: each op counts.
    s.applyTxn({
      compare: [],
      success: [
        { type: 'put', key: 'x', value: '1' },
        { type: 'put', key: 'y', value: '1' },
        { type: 'delete', key: 'k' },
      ],
      failure: [],
    });
    expect(s.applied).toEqual({ puts: 6, deletes: 3 });
    expect(s.mvcc.liveKeys()).toBe(2);
    // A lease revoke deletes each attached key separately.
    s.applyLeaseGrant(7n, 60, 0);
    s.applyPut(b('l1'), b('v'), { lease: 7n });
    s.applyPut(b('l2'), b('v'), { lease: 7n });
    expect(s.mvcc.liveKeys()).toBe(4);
    s.applyLeaseRevoke(7n);
    expect(s.applied).toEqual({ puts: 8, deletes: 5 });
    expect(s.mvcc.liveKeys()).toBe(2);
  });
});
