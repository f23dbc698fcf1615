/**
 * The store's etcd 3.4 rules that the differential test (test/differential) found, pinned on the
 * store itself, with the neighbouring cases that must not change.
 */
import { describe, expect, it } from 'vitest';
import { Store } from '../../backends/raft/store/store.js';

const enc = new TextEncoder();

function store(...keys: string[]): Store {
  const s = new Store({ minTtlSeconds: 1 });
  for (const k of keys) s.applyPut(enc.encode(k), enc.encode(`v-${k}`));
  return s;
}

describe('store — etcd 3.4 rules', () => {
  it('a countOnly read with a limit below the count reports the whole count and more = false', () => {
    const s = store('a', 'b', 'c');
    const r = s.range('', { fromKey: true, countOnly: true, limit: 1 });
    expect(r).toMatchObject({ count: 3, kvs: [], more: false });
  });

  it('a read with a limit below the count still reports more = true', () => {
    const s = store('a', 'b', 'c');
    const r = s.range('', { fromKey: true, limit: 2 });
    expect(r.count).toBe(3);
    expect(r.kvs.map((kv) => new TextDecoder().decode(kv.key))).toEqual(['a', 'b']);
    expect(r.more).toBe(true);
  });

  it('a plain put with ignoreValue of a missing key and an unknown lease fails lease-not-found', () => {
    const s = store();
    expect(() =>
      s.applyPut(enc.encode('missing'), new Uint8Array(), { ignoreValue: true, lease: 7n }),
    ).toThrow(expect.objectContaining({ code: 'lease-not-found' }));
  });

  it('a plain put with ignoreValue of a missing key and a granted lease fails key not found', () => {
    const s = store();
    s.applyLeaseGrant(7n, 60, 0);
    expect(() =>
      s.applyPut(enc.encode('missing'), new Uint8Array(), { ignoreValue: true, lease: 7n }),
    ).toThrow(expect.objectContaining({ code: 'invalid-argument' }));
    expect(s.revision).toBe(1);
  });
});
