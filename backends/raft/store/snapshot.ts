/**
 * Snapshot and restore of the whole store: every key's records since compaction, the current and
 * compacted revisions, leases (granted TTL and attached keys) and the applied Raft index. Used for
 * Raft snapshots and log compaction. Lease deadlines are volatile and not included: whoever
 * restores and leads calls `leases.promote(now)`, as a new leader would.
 *
 * Format (version 1): UTF-8 JSON with bytes as base64. Simple and checkable; a binary format can
 * replace it behind the same two functions.
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type { KeyRecord } from './mvcc.js';
import { Store } from './store.js';

interface SnapV1 {
  v: 1;
  applied: number;
  rev: number;
  compact: number;
  keys: Array<[string, Array<[number, number, string | null, number, number, number, string]>]>;
  leases: Array<[string, number, number, string[]]>;
}

const b64 = (b: Uint8Array) => Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('base64');
const unb64 = (s: string) => new Uint8Array(Buffer.from(s, 'base64'));

export function snapshotStore(store: Store): Uint8Array {
  const keys: SnapV1['keys'] = [];
  store.mvcc.index.forEachPair((k, recs) => {
    keys.push([
      Buffer.from(k, 'latin1').toString('base64'),
      recs.map((r) => [
        r.main,
        r.sub,
        r.kv ? b64(r.kv.value) : null,
        r.kv?.createRevision ?? 0,
        r.kv?.modRevision ?? 0,
        r.kv?.version ?? 0,
        (r.kv?.lease ?? 0n).toString(),
      ]),
    ]);
  });
  const leases: SnapV1['leases'] = [...store.leases.byId.values()].map((l) => [
    l.id.toString(),
    l.ttlSeconds,
    l.grantedTtlSeconds,
    [...l.keys].map((k) => Buffer.from(k, 'latin1').toString('base64')),
  ]);
  const snap: SnapV1 = {
    v: 1,
    applied: store.appliedIndex,
    rev: store.mvcc.currentRev,
    compact: store.mvcc.compactRev,
    keys,
    leases,
  };
  return new TextEncoder().encode(JSON.stringify(snap));
}

export function restoreStore(data: Uint8Array, opts: { minTtlSeconds: number; nowMs: number }): Store {
  let snap: SnapV1;
  try {
    snap = JSON.parse(new TextDecoder().decode(data)) as SnapV1;
  } catch (err) {
    throw new ConclaveError(ErrorCode.Corrupt, 'store snapshot: not valid JSON', { cause: err });
  }
  if (snap.v !== 1)
    throw new ConclaveError(ErrorCode.Corrupt, `store snapshot: unknown format version ${String(snap.v)}`);
  const store = new Store({ minTtlSeconds: opts.minTtlSeconds });
  store.appliedIndex = snap.applied;
  store.mvcc.currentRev = snap.rev;
  store.mvcc.compactRev = snap.compact;
  for (const [k64, recs] of snap.keys) {
    const keyB = unb64(k64);
    const key = Buffer.from(keyB).toString('latin1');
    const out: KeyRecord[] = recs.map(([main, sub, v, create, mod, version, lease]) => ({
      main,
      sub,
      kv:
        v === null
          ? undefined
          : {
              key: keyB,
              value: unb64(v),
              createRevision: create,
              modRevision: mod,
              version,
              lease: BigInt(lease),
            },
    }));
    store.mvcc.index.set(key, out);
  }
  for (const [id, ttl, granted, keys] of snap.leases) {
    store.leases.byId.set(BigInt(id), {
      id: BigInt(id),
      ttlSeconds: ttl,
      grantedTtlSeconds: granted,
      keys: new Set(keys.map((k) => Buffer.from(k, 'base64').toString('latin1'))),
      expiryMs: opts.nowMs + ttl * 1000,
    });
  }
  return store;
}
