/**
 * The replicated state machine with etcd v3.4 semantics: MVCC key space, txn, compaction, leases
 * and a watch hub. `apply*` methods are deterministic (no clock, no randomness: lease ids come in
 * the command); reads and watches are served from the applied state.
 */

import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { compareBytes, EMPTY, resolveRange, toBytes } from '../../../src/keys.js';
import type {
  Compare,
  DeleteResult,
  KeyValue,
  Op,
  OpResponse,
  PutResult,
  RangeOptions,
  RangeResult,
  Txn,
  TxnResult,
} from '../../../src/types.js';
import { AlarmStore } from './alarms.js';
import { AuthStore } from './auth-store.js';
import { Leases } from './leases.js';
import { keyString, Mvcc, type MvccEvent, StoreInvariantError, storeAssert } from './mvcc.js';
import { branch, checkPath, checkTxnRequest, choosePath, type TxnPath } from './txn-check.js';
import { WatchHub } from './watch-hub.js';

type RangeOpts = Omit<RangeOptions, 'signal' | 'serializable'>;

/** The options of an op that has none (shared: never modified). */
const noOptions = Object.freeze({});

interface WriteCtx {
  readonly main: number;
  sub: number;
  changed: boolean;
  readonly events: MvccEvent[];
}

function cmpNumber(a: number | bigint, b: number | bigint, r: Compare['result']): boolean {
  switch (r) {
    case '=':
      return a === b;
    case '!=':
      return a !== b;
    case '<':
      return a < b;
    case '>':
      return a > b;
  }
}

export class Store {
  readonly mvcc = new Mvcc();
  /** Users, roles, permissions and auth state (etcd's auth store), applied from `auth` commands. */
  readonly auth = new AuthStore();
  /** The cluster's alarms (etcd's alarm store), applied from `alarm` commands. */
  readonly alarms = new AlarmStore();
  readonly leases: Leases;
  readonly hub: WatchHub;
  /** Raft index of the last applied entry (persisted with snapshots). */
  appliedIndex = 0;
  /**
   * Put and delete-range operations applied since this process started, as etcd counts them for
   * etcd_mvcc_put_total / etcd_mvcc_delete_total (mvcc/metrics_txn.go: one per Put and one per
   * DeleteRange of a write, whatever it deleted; a lease revoke deletes each attached key
   * separately). Not part of the state: a replica replaying its log counts again, as etcd's
   * counters restart with the process.
   */
  readonly applied = { puts: 0, deletes: 0 };

  constructor(opts: { minTtlSeconds: number }) {
    this.leases = new Leases(opts.minTtlSeconds);
    this.hub = new WatchHub(this.mvcc);
  }

  /**
   * Replaces this store's whole state with `other`'s (a restored Raft snapshot) in place, so the
   * watchers attached to this store's hub survive: they are resynced from the new state.
   */
  replaceState(other: Store): void {
    this.mvcc.replaceWith(other.mvcc);
    this.leases.byId.clear();
    for (const [id, l] of other.leases.byId) this.leases.byId.set(id, l);
    this.appliedIndex = other.appliedIndex;
    this.auth.restore(other.auth.encode());
    this.alarms.restore(other.alarms.encode());
    this.hub.resync();
  }

  get revision(): number {
    return this.mvcc.currentRev;
  }

  /**
   * The key space's invariants (`Mvcc.checkInvariants`) and the lease attachments both ways: every
   * key a lease lists is live with that lease on its latest put, and every live key with a lease
   * is listed by it (etcd's lessor keeps the same two-way map; a key missing from its lease would
   * outlive the lease, one listed by the wrong lease would be deleted with it). Throws
   * `StoreInvariantError`. O(keys + records): for tests and simulations between writes.
   */
  checkInvariants(): void {
    this.mvcc.checkInvariants();
    let attached = 0;
    for (const [id, l] of this.leases.byId) {
      if (l.id !== id) throw new StoreInvariantError(`lease ${id} is filed under id ${l.id}`);
      for (const k of l.keys) {
        const last = this.mvcc.latest(k, this.mvcc.index.get(k));
        if (!last || last.lease !== id)
          throw new StoreInvariantError(
            `lease ${id} lists key ${JSON.stringify(k)}, whose latest put has ${last ? `lease ${last.lease}` : 'none (deleted)'}`,
          );
        attached++;
      }
    }
    let leased = 0;
    this.mvcc.index.forEachPair((k, entry) => {
      const last = this.mvcc.latest(k, entry);
      if (!last || last.lease === 0n) return;
      leased++;
      if (!this.leases.byId.get(last.lease)?.keys.has(k))
        throw new StoreInvariantError(
          `key ${JSON.stringify(k)} is put with lease ${last.lease}, which does not list it`,
        );
    });
    if (leased !== attached)
      throw new StoreInvariantError(`${attached} lease attachments, ${leased} live keys with a lease`);
  }

  // ------------------------------------------------------------------------------------------
  // Reads

  range(key: Uint8Array | string, o: RangeOpts = {}, atRev = 0): RangeResult {
    const r = resolveRange(key, o);
    // `atRev` is internal: a txn reads at its own pending revision, which sees its earlier writes.
    const rev =
      o.revision && o.revision > 0
        ? this.mvcc.checkRevision(o.revision)
        : atRev > 0
          ? atRev
          : this.mvcc.currentRev;
    const start = keyString(r.key);
    const end = keyString(r.end);
    // `count` is the whole range whatever the filters and the limit (etcd's apply.go Range).
    if (o.countOnly)
      return {
        kvs: [],
        count: this.mvcc.count(start, end, rev),
        more: false,
        revision: this.mvcc.currentRev,
      };
    let kvs: KeyValue[] = [];
    let count = 0;
    const filtered = !!(o.minModRevision || o.maxModRevision || o.minCreateRevision || o.maxCreateRevision);
    const keyOrder = !o.sort || ((o.sort.target ?? 'key') === 'key' && o.sort.order !== 'descend');
    if (o.limit && o.limit > 0 && !filtered && keyOrder) {
      // Only the first `limit` keys are returned: make only their KeyValues, count the rest.
      this.mvcc.scan(start, end, rev, (_k, kv) => kvs.push(kv), o.limit);
      count = kvs.length < o.limit ? kvs.length : this.mvcc.count(start, end, rev);
      const more = count > kvs.length;
      if (o.keysOnly) kvs = kvs.map((kv) => ({ ...kv, value: EMPTY }));
      return { kvs, count, more, revision: this.mvcc.currentRev };
    }
    this.mvcc.scan(start, end, rev, (_k, kv) => {
      count++;
      kvs.push(kv);
    });
    // etcd prunes by revision filters after counting: `count` is the whole range (pinned by the suite).
    if (o.minModRevision) kvs = kvs.filter((kv) => kv.modRevision >= o.minModRevision!);
    if (o.maxModRevision) kvs = kvs.filter((kv) => kv.modRevision <= o.maxModRevision!);
    if (o.minCreateRevision) kvs = kvs.filter((kv) => kv.createRevision >= o.minCreateRevision!);
    if (o.maxCreateRevision) kvs = kvs.filter((kv) => kv.createRevision <= o.maxCreateRevision!);
    const target = o.sort?.target ?? 'key';
    let order = o.sort?.order ?? 'none';
    if (o.sort && order === 'none' && target !== 'key') order = 'ascend';
    if (order !== 'none') {
      const by: (a: KeyValue, b: KeyValue) => number =
        target === 'key'
          ? (a, b) => compareBytes(a.key, b.key)
          : target === 'value'
            ? (a, b) => compareBytes(a.value, b.value)
            : target === 'version'
              ? (a, b) => a.version - b.version
              : target === 'create'
                ? (a, b) => a.createRevision - b.createRevision
                : (a, b) => a.modRevision - b.modRevision;
      kvs.sort(order === 'descend' ? (a, b) => by(b, a) : by);
    }
    let more = false;
    // A countOnly read returns no keys, and etcd applies the limit (and sets `more`) to the keys it
    // returns: `more` stays false however large the count (apply.go Range).
    if (o.limit && o.limit > 0 && !o.countOnly && kvs.length > o.limit) {
      kvs = kvs.slice(0, o.limit);
      more = true;
    }
    if (o.countOnly) kvs = [];
    else if (o.keysOnly) kvs = kvs.map((kv) => ({ ...kv, value: EMPTY }));
    return { kvs, count, more, revision: this.mvcc.currentRev };
  }

  // ------------------------------------------------------------------------------------------
  // Writes (deterministic)

  #begin(): WriteCtx {
    return { main: this.mvcc.currentRev + 1, sub: 0, changed: false, events: [] };
  }

  /** Runs `body` as one atomic write: if it throws, every change it made is undone. */
  #atomic<T>(body: (w: WriteCtx) => T): T {
    const w = this.#begin();
    this.mvcc.undo = [];
    let r: T;
    try {
      r = body(w);
    } catch (err) {
      const undo = this.mvcc.undo;
      this.mvcc.undo = undefined;
      for (let i = undo.length - 1; i >= 0; i--) undo[i]!();
      throw err;
    }
    this.mvcc.undo = undefined;
    return r;
  }

  #commit(w: WriteCtx): number {
    if (w.changed) {
      // Revisions are dense and each is one write (etcd's): a write that began at another
      // revision than the next would skip one or give one revision two states.
      storeAssert(
        w.main === this.mvcc.currentRev + 1,
        `a write of revision ${w.main} commits after currentRev ${this.mvcc.currentRev}`,
      );
      this.mvcc.currentRev = w.main;
      this.hub.notify(w.main, w.events);
    }
    return this.mvcc.currentRev;
  }

  #put(
    w: WriteCtx,
    key: Uint8Array,
    value: Uint8Array,
    o: { lease?: bigint; prevKv?: boolean; ignoreValue?: boolean; ignoreLease?: boolean },
  ): PutResult {
    const k = keyString(key);
    // One index lookup per put: the entry is passed on to the MVCC write (the write is at or
    // above every record, so the put it follows is the key's latest record).
    const entry = this.mvcc.entry(k);
    const prev = this.mvcc.latest(k, entry);
    if ((o.ignoreValue || o.ignoreLease) && !prev)
      throw new ConclaveError(ErrorCode.InvalidArgument, 'etcdserver: key not found');
    const lease = o.ignoreLease ? prev!.lease : (o.lease ?? 0n);
    if (lease !== 0n) this.leases.require(lease);
    const val = o.ignoreValue ? prev!.value() : value;
    const ev = this.mvcc.put(k, key, val, lease, w.main, w.sub++, entry, prev);
    if (prev && prev.lease !== lease) this.leases.detach(prev.lease, k, this.mvcc.undo);
    this.leases.attach(lease, k, this.mvcc.undo);
    w.changed = true;
    w.events.push(ev);
    this.applied.puts++;
    return o.prevKv && prev ? { revision: w.main, prevKv: prev.kv! } : { revision: w.main };
  }

  #delete(
    w: WriteCtx,
    key: Uint8Array | string,
    o: { end?: Uint8Array | string; prefix?: boolean; fromKey?: boolean; prevKv?: boolean },
  ): DeleteResult {
    const r = resolveRange(key, o);
    const keys: string[] = [];
    this.mvcc.scan(keyString(r.key), keyString(r.end), w.main, (k) => keys.push(k));
    const prevKvs: KeyValue[] = [];
    for (const k of keys) {
      const d = this.mvcc.delete(k, w.main, w.sub++);
      if (!d) continue;
      this.leases.detach(d.prev.lease, k, this.mvcc.undo);
      w.events.push(d.event);
      // The response's prevKv is the key as the txn saw it (its own put, if any), as in etcd.
      prevKvs.push(d.prev);
    }
    if (keys.length > 0) w.changed = true;
    this.applied.deletes++;
    return { revision: w.main, deleted: keys.length, prevKvs: o.prevKv ? prevKvs : [] };
  }

  applyPut(
    key: Uint8Array,
    value: Uint8Array,
    o: { lease?: bigint; prevKv?: boolean; ignoreValue?: boolean; ignoreLease?: boolean } = {},
  ): PutResult {
    // etcd looks a plain put's lease up before anything else (apply.go Put without a txn), so an
    // unknown lease is lease-not-found even when an ignore flag's key is missing too.
    if (o.lease !== undefined && o.lease !== 0n) this.leases.require(o.lease);
    // A single put needs no undo log (`#atomic`): `#put` refuses (throws) only before its first
    // change, and nothing after that throws. Its result carries `w.main`, the revision committed.
    const w = this.#begin();
    const r = this.#put(w, key, value, o);
    this.#commit(w);
    return r;
  }

  applyDelete(
    key: Uint8Array | string,
    o: { end?: Uint8Array | string; prefix?: boolean; fromKey?: boolean; prevKv?: boolean } = {},
  ): DeleteResult {
    return this.#atomic((w) => {
      const r = this.#delete(w, key, o);
      return { ...r, revision: this.#commit(w) };
    });
  }

  applyTxn(t: Txn): TxnResult {
    checkTxnRequest(t);
    return this.#atomic((w) => {
      // etcd's compareToPath: every compare, nested ones included, sees the store before the txn.
      const path = choosePath(t, (c) => this.#compare(c, this.mvcc.currentRev));
      // etcd's checkRequests: every put on the path, then every read, before any op runs.
      checkPath(t, path, {
        keyExists: (key) => this.mvcc.getAt(keyString(key), this.mvcc.currentRev) !== undefined,
        requireLease: (id) => this.leases.require(id),
        checkRevision: (rev) => this.mvcc.checkRevision(rev),
      });
      const res = this.#txn(w, t, path);
      return fixRevisions(res, this.#commit(w));
    });
  }

  #txn(w: WriteCtx, t: Txn, path: TxnPath): TxnResult {
    const succeeded = path.get(t) ?? false;
    const responses: OpResponse[] = branch(t, succeeded).map((op) => this.#op(w, op, path));
    return { succeeded, revision: 0, responses };
  }

  #op(w: WriteCtx, op: Op, path: TxnPath): OpResponse {
    switch (op.type) {
      case 'get':
        return { type: 'get', ...this.range(op.key, op.options ?? {}, op.options?.revision ? 0 : w.main) };
      case 'put': {
        // No spread (the hot op of a txn): the response is built from the result's two fields.
        const r = this.#put(w, toBytes(op.key), toBytes(op.value), op.options ?? noOptions);
        return r.prevKv
          ? { type: 'put', revision: r.revision, prevKv: r.prevKv }
          : { type: 'put', revision: r.revision };
      }
      case 'delete':
        return { type: 'delete', ...this.#delete(w, op.key, op.options ?? {}) };
      case 'txn':
        return { type: 'txn', ...this.#txn(w, op.txn, path) };
    }
  }

  /** One compare (etcd applyCompare): every key of a range must satisfy it; a VALUE compare on a missing key is false. */
  #compare(c: Compare, rev: number): boolean {
    const r = resolveRange(c.key, c);
    const kvs: KeyValue[] = [];
    this.mvcc.scan(keyString(r.key), keyString(r.end), rev, (_k, kv) => kvs.push(kv));
    // A missing key has version/create/mod 0 and no lease; a VALUE compare on it is false.
    if (kvs.length === 0) return this.#compareMissing(c);
    return kvs.every((kv) => {
      switch (c.target) {
        case 'version':
          return cmpNumber(kv.version, c.value, c.result);
        case 'create':
          return cmpNumber(kv.createRevision, c.value, c.result);
        case 'mod':
          return cmpNumber(kv.modRevision, c.value, c.result);
        case 'lease':
          return cmpNumber(kv.lease, c.value, c.result);
        case 'value': {
          const d = compareBytes(kv.value, toBytes(c.value));
          return c.result === '=' ? d === 0 : c.result === '!=' ? d !== 0 : c.result === '<' ? d < 0 : d > 0;
        }
        default:
          return false;
      }
    });
  }

  #compareMissing(c: Compare): boolean {
    switch (c.target) {
      case 'lease':
        return cmpNumber(0n, c.value, c.result);
      case 'value':
        return false;
      default:
        return cmpNumber(0, c.value, c.result);
    }
  }

  applyCompact(rev: number): void {
    this.mvcc.compact(rev);
    this.hub.compacted(rev);
  }

  // ------------------------------------------------------------------------------------------
  // Leases

  applyLeaseGrant(id: bigint, ttlSeconds: number, nowMs: number): { id: bigint; ttlSeconds: number } {
    const l = this.leases.grant(id, ttlSeconds, nowMs);
    return { id: l.id, ttlSeconds: l.ttlSeconds };
  }

  /** Deletes every attached key at one revision. */
  applyLeaseRevoke(id: bigint): { revision: number } {
    const l = this.leases.require(id);
    return this.#atomic((w) => {
      for (const k of [...l.keys].sort()) this.#delete(w, new Uint8Array(Buffer.from(k, 'latin1')), {});
      this.leases.remove(id);
      return { revision: this.#commit(w) };
    });
  }
}

/**
 * Inside a txn every response carries the txn's final revision (etcd's header). Set in place:
 * every response of `r` was made by this txn's ops (no copy per op).
 */
function fixRevisions(r: TxnResult, revision: number): TxnResult {
  for (const x of r.responses) {
    if (x.type === 'txn') fixRevisions(x, revision);
    else (x as { revision: number }).revision = revision;
  }
  (r as { revision: number }).revision = revision;
  return r;
}
