/**
 * MVCC key space with etcd v3.4 semantics: every write gets a revision {main, sub}; each key keeps
 * its records (puts and tombstones) since the last compaction, so reads at any revision since then
 * see the state as of that revision. Keys are ordered byte-wise in a B+ tree (sorted-btree), keyed
 * by the latin1 decoding of the bytes (one char per byte, so string order is byte order).
 *
 * Invariants: compactRev <= currentRev; each key's records are in increasing revision order.
 */
import BTreeModule from 'sorted-btree';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import type { KeyValue } from '../../../src/types.js';

// sorted-btree ships CommonJS with `default` as the class.
const BTree = ((BTreeModule as unknown as { default?: unknown }).default ??
  BTreeModule) as typeof import('sorted-btree').default;

export const keyString = (b: Uint8Array): string =>
  Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('latin1');
export const keyBytes = (s: string): Uint8Array => new Uint8Array(Buffer.from(s, 'latin1'));

export interface KeyRecord {
  readonly main: number;
  readonly sub: number;
  /** undefined for a tombstone. */
  readonly kv: KeyValue | undefined;
}

export interface MvccEvent {
  readonly type: 'put' | 'delete';
  readonly kv: KeyValue;
  readonly prevKv?: KeyValue;
}

const EMPTY = new Uint8Array(0);

export class Mvcc {
  index = new BTree<string, KeyRecord[]>();
  currentRev = 1;
  compactRev = 0;

  checkRevision(rev: number): number {
    if (rev <= 0) return this.currentRev;
    if (rev > this.currentRev)
      throw new ConclaveError(ErrorCode.FutureRevision, 'mvcc: required revision is a future revision');
    if (rev < this.compactRev) {
      throw new ConclaveError(ErrorCode.Compacted, 'mvcc: required revision has been compacted', {
        compactRevision: this.compactRev,
      });
    }
    return rev;
  }

  /** The key's state at `rev`, or undefined. */
  getAt(key: string, rev: number): KeyValue | undefined {
    const recs = this.index.get(key);
    if (!recs) return undefined;
    for (let i = recs.length - 1; i >= 0; i--) if (recs[i]!.main <= rev) return recs[i]!.kv;
    return undefined;
  }

  /** Live keys in [start, end) at `rev`; end '' = the single key, '\0' = to the end. */
  scan(start: string, end: string, rev: number, visit: (key: string, kv: KeyValue) => void): void {
    if (end === '') {
      const kv = this.getAt(start, rev);
      if (kv) visit(start, kv);
      return;
    }
    const hi = end === '\u0000' ? undefined : end;
    for (const [k, recs] of this.index.entries(start)) {
      if (hi !== undefined && k >= hi) break;
      let kv: KeyValue | undefined;
      for (let i = recs.length - 1; i >= 0; i--) {
        if (recs[i]!.main <= rev) {
          kv = recs[i]!.kv;
          break;
        }
      }
      if (kv) visit(k, kv);
    }
  }

  /** Undo actions of the current write, run in reverse if it fails midway (a txn is all or nothing). */
  undo: Array<() => void> | undefined;

  /** Writes a put at {main, sub}; returns the event. */
  put(key: string, keyB: Uint8Array, value: Uint8Array, lease: bigint, main: number, sub: number): MvccEvent {
    const prev = this.getAt(key, main);
    const kv: KeyValue = {
      key: keyB,
      createRevision: prev ? prev.createRevision : main,
      modRevision: main,
      version: prev ? prev.version + 1 : 1,
      value,
      lease,
    };
    this.#append(key, { main, sub, kv });
    return prev ? { type: 'put', kv, prevKv: prev } : { type: 'put', kv };
  }

  delete(key: string, main: number, sub: number): MvccEvent | undefined {
    const prev = this.getAt(key, main);
    if (!prev) return undefined;
    this.#append(key, { main, sub, kv: undefined });
    return {
      type: 'delete',
      kv: { key: prev.key, createRevision: 0, modRevision: main, version: 0, value: EMPTY, lease: 0n },
      prevKv: prev,
    };
  }

  #append(key: string, r: KeyRecord): void {
    const recs = this.index.get(key);
    if (recs) {
      const last = recs[recs.length - 1]!;
      // Within one revision (a txn), a later op on the same key replaces the earlier record.
      if (last.main === r.main) {
        recs[recs.length - 1] = r;
        this.undo?.push(() => {
          recs[recs.length - 1] = last;
        });
      } else {
        recs.push(r);
        this.undo?.push(() => {
          recs.pop();
        });
      }
    } else {
      this.index.set(key, [r]);
      this.undo?.push(() => {
        this.index.delete(key);
      });
    }
  }

  /**
   * The events of every revision at or after `fromRev` still held in the records, in revision
   * order (sub-revision order within one), with prevKv — what a watch replays. Used to rebuild a
   * watch hub's history after the store was restored from a snapshot.
   */
  eventsSince(fromRev: number): Array<{ rev: number; events: MvccEvent[] }> {
    const byRev = new Map<number, Array<{ sub: number; ev: MvccEvent }>>();
    this.index.forEachPair((_k, recs) => {
      for (let i = 0; i < recs.length; i++) {
        const r = recs[i]!;
        if (r.main < fromRev) continue;
        const prev = i > 0 ? recs[i - 1]!.kv : undefined;
        let ev: MvccEvent | undefined;
        if (r.kv) ev = prev ? { type: 'put', kv: r.kv, prevKv: prev } : { type: 'put', kv: r.kv };
        else if (prev) {
          const kv = {
            key: prev.key,
            createRevision: 0,
            modRevision: r.main,
            version: 0,
            value: EMPTY,
            lease: 0n,
          };
          ev = { type: 'delete', kv, prevKv: prev };
        }
        if (!ev) continue;
        let list = byRev.get(r.main);
        if (!list) byRev.set(r.main, (list = []));
        list.push({ sub: r.sub, ev });
      }
    });
    return [...byRev.entries()]
      .sort((a, b) => a[0] - b[0])
      .map(([rev, list]) => ({ rev, events: list.sort((a, b) => a.sub - b.sub).map((x) => x.ev) }));
  }

  /** etcd's compaction rules; drops history below `rev` but keeps each key's state at `rev`. */
  compact(rev: number): void {
    if (rev <= this.compactRev) {
      throw new ConclaveError(ErrorCode.Compacted, 'mvcc: required revision has been compacted', {
        compactRevision: this.compactRev,
      });
    }
    if (rev > this.currentRev)
      throw new ConclaveError(ErrorCode.FutureRevision, 'mvcc: required revision is a future revision');
    this.compactRev = rev;
    const drop: string[] = [];
    this.index.forEachPair((k, recs) => {
      let keepFrom = 0;
      for (let i = recs.length - 1; i >= 0; i--) {
        if (recs[i]!.main <= rev) {
          keepFrom = recs[i]!.kv ? i : i + 1;
          break;
        }
      }
      if (keepFrom > 0) recs.splice(0, keepFrom);
      if (recs.length === 0) drop.push(k);
    });
    for (const k of drop) this.index.delete(k);
  }
}
