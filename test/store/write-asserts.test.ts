/**
 * The write path's O(1) assertions (storeAssert in mvcc.ts): a record that would rewrite history
 * or break a key's record order throws `StoreInvariantError` at the write, instead of corrupting
 * what later reads, watches and snapshots see.
 */
import { describe, expect, it } from 'vitest';
import { StoreInvariantError } from '../../backends/raft/store/mvcc.js';
import { Store } from '../../backends/raft/store/store.js';

const enc = new TextEncoder();

describe('store write assertions', () => {
  it('a record at or below the current revision is refused', () => {
    const s = new Store({ minTtlSeconds: 1 });
    s.applyPut(enc.encode('a'), enc.encode('1'));
    s.applyPut(enc.encode('a'), enc.encode('2'));
    const rev = s.revision;
    const put = () => s.mvcc.put('a', enc.encode('a'), enc.encode('old'), 0n, rev, 0);
    expect(put).toThrow(StoreInvariantError);
    expect(put).toThrow(/a write at revision 3 of "a" is not above currentRev 3/);
    // Nothing was written: the key's history is as it was.
    expect(new TextDecoder().decode(s.range('a').kvs[0]!.value)).toBe('2');
    expect(s.range('a', { revision: 2 }).kvs[0]!.version).toBe(1);
    s.checkInvariants();
  });

  it("a record that is not after the key's last one is refused", () => {
    const s = new Store({ minTtlSeconds: 1 });
    s.applyPut(enc.encode('a'), enc.encode('1'));
    const main = s.revision + 1;
    s.mvcc.put('a', enc.encode('a'), enc.encode('x'), 0n, main, 1);
    expect(() => s.mvcc.put('a', enc.encode('a'), enc.encode('y'), 0n, main, 0)).toThrow(
      /record \{3, 0\} of "a" is not after its last \{3, 1\}/,
    );
  });
});
