/**
 * stm: software transactional memory over the KV, with the semantics of etcd's Go
 * `clientv3/concurrency` STM (`NewSTM`) and its four isolation levels.
 *
 * `fn` reads keys through the STM object (`get`, `getBytes`, `rev`, `range`) and buffers writes
 * (`put`, `del`). When `fn` returns, the writes are committed in one txn whose compares check that
 * what `fn` read is still current (the checks depend on the isolation level). If a check fails, the
 * attempt is discarded and `fn` runs again on fresh data, at most `retriesMax` more times.
 *
 * Isolation levels, as etcd's:
 * - `SerializableSnapshot` (default): every read of an attempt is served at the revision of its
 *   first read (one snapshot); the commit requires every read key's mod revision unchanged and
 *   every written key not modified after the snapshot revision (first committer wins, even for
 *   blind writes).
 * - `Serializable`: reads pinned to the first read's revision; the commit checks the read set only.
 * - `RepeatableReads`: each key is read at the then-current revision and cached for the attempt;
 *   the commit checks the read set. Different keys
 *   may come from different revisions inside one attempt (read skew is visible to `fn`), but such an
 *   attempt never commits.
 * - `ReadCommitted`: reads as `RepeatableReads` (cached for the attempt, as etcd's), no commit
 *   check: the writes are applied whatever happened meanwhile (lost updates and write skew allowed).
 *
 * Beyond Go's STM: `range()` reads (a range is checked at commit for inserted, changed and deleted
 * keys), reads and writes of bytes, and an attempt whose pinned revision was compacted is retried
 * instead of failing.
 */
import { abortReason, ConclaveError, ErrorCode } from '../src/errors.js';
import { compareBytes, resolveRange, toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import { limits } from '../src/limits.js';
import type { Bytes, CallOptions, Compare, KeyValue, LeaseId, Op, RangeResult } from '../src/types.js';
import { checkRetriesMax, conflictBackoff, conflictBackoffMsMax, retriesLimitMax } from './internal/retry.js';

/** The isolation levels of `stm()` (etcd's Go `concurrency` STM levels); see docs/recipes/stm.md. */
export const Isolation = {
  SerializableSnapshot: 'serializable-snapshot',
  Serializable: 'serializable',
  RepeatableReads: 'repeatable-reads',
  ReadCommitted: 'read-committed',
} as const;
/** One of the {@link Isolation} values. */
export type Isolation = (typeof Isolation)[keyof typeof Isolation];

/** Default re-runs of `fn` after a conflict (so at most `stmRetriesMax + 1` attempts). */
export const stmRetriesMax = 32;
/** The largest `retriesMax` a caller may ask for. */
export const stmRetriesLimitMax = retriesLimitMax;
/** Keys one `range()` may return; a larger range fails `request-too-large`. */
export const stmRangeKeysMax = 1000;
/** Keys one attempt may hold in its read cache (bounds memory for `ReadCommitted`, which has no compares). */
export const stmReadKeysMax = 10_000;
/**
 * Compares (and writes) one commit may carry: etcd's default `--max-txn-ops`. Every key read is one
 * compare, every range one more, and under `SerializableSnapshot` every written key one more.
 */
export const stmCompareMax = limits.txnOpsMax;
/** Longest randomised pause (ms) between two attempts after repeated conflicts. */
export const stmBackoffMsMax = conflictBackoffMsMax;

export interface StmOptions extends CallOptions {
  /** Default `Isolation.SerializableSnapshot` (as etcd's `NewSTM`). */
  isolation?: Isolation;
  /** Re-runs after a conflict before failing `retries-exhausted` (default `limits.stm.retriesMaxDefault`). */
  retriesMax?: number;
  /** Keys read in one round trip before every attempt (etcd's `WithPrefetch`). */
  prefetch?: Bytes[];
}

/** What `stm()` resolves with once an attempt committed. */
export interface StmResult<T> {
  /** What `fn` returned in the attempt that committed. */
  readonly value: T;
  /** The revision of the commit (unchanged from the store's when nothing was written). */
  readonly revision: number;
  /** Attempts made, including the one that committed (1 = no conflict). */
  readonly attempts: number;
}

/** One key of a `range()` view: what the attempt would see, including its own buffered writes. */
export interface StmEntry {
  readonly key: string;
  readonly value: string;
  readonly keyBytes: Uint8Array;
  readonly valueBytes: Uint8Array;
}

export interface StmRangeOptions extends CallOptions {
  /** Range end (exclusive) instead of a prefix. */
  end?: Bytes;
  /** Every key `>= key` instead of a prefix. */
  fromKey?: boolean;
}

/** The transaction handle `fn` receives. Valid only during its own attempt. */
export interface STM {
  readonly isolation: Isolation;
  /** 1 for the first attempt, 2 after one conflict, … */
  readonly attempt: number;
  /** Aborted when the caller's signal aborts. */
  readonly signal: AbortSignal;
  /** The key's value as UTF-8 text (a buffered write wins), or undefined when absent. */
  get(key: Bytes, opts?: CallOptions): Promise<string | undefined>;
  /** The key's value as bytes (a buffered write wins), or undefined when absent. */
  getBytes(key: Bytes, opts?: CallOptions): Promise<Uint8Array | undefined>;
  /** The key's mod revision as read (buffered writes ignored), 0 when absent — as Go's `Rev`. */
  rev(key: Bytes, opts?: CallOptions): Promise<number>;
  /** Every key under the prefix `key` (or in `[key, end)`, or `>= key`), sorted, with buffered writes applied. */
  range(key: Bytes, opts?: StmRangeOptions): Promise<StmEntry[]>;
  /** Buffers a put, applied at commit. */
  put(key: Bytes, value: Bytes, opts?: { lease?: LeaseId }): void;
  /** Buffers a delete of one key, applied at commit. */
  del(key: Bytes): void;
}

/** A binary-safe map key for bytes. */
function id(b: Uint8Array): string {
  let s = '';
  for (let i = 0; i < b.length; i++) s += String.fromCharCode(b[i]!);
  return s;
}

/** Whether `k` lies in etcd's range `[key, end)` (empty end: the key only; "\0": every key >= key). */
function inRange(k: Uint8Array, key: Uint8Array, end: Uint8Array): boolean {
  if (end.length === 0) return compareBytes(k, key) === 0;
  if (compareBytes(k, key) < 0) return false;
  return (end.length === 1 && end[0] === 0) || compareBytes(k, end) < 0;
}

interface RangeRead {
  readonly key: Uint8Array;
  readonly end: Uint8Array;
  readonly revision: number;
}

interface Write {
  readonly key: Uint8Array;
  /** Undefined for a delete. */
  readonly value: Uint8Array | undefined;
  readonly lease: LeaseId | undefined;
}

/** Reads returned by a failed commit's failure branch, offered to the next attempt (etcd's prefetch). */
interface Prefetch {
  readonly revision: number;
  readonly keys: Map<string, KeyValue | undefined>;
  readonly ranges: Map<string, KeyValue[]>;
}

/** Thrown inside an attempt that cannot commit (its pinned revision was compacted): retry it. */
class AttemptDoomed extends ConclaveError {}

const pinned = (iso: Isolation) => iso === Isolation.SerializableSnapshot || iso === Isolation.Serializable;

/** One attempt of `fn`: its read cache, range reads, write buffer and pinned revision. */
class Attempt implements STM {
  readonly isolation: Isolation;
  readonly attempt: number;
  readonly signal: AbortSignal;
  readonly #kv: KV;
  /** Every key observed (present or absent) → what this attempt saw. */
  readonly #keys = new Map<string, { key: Uint8Array; kv: KeyValue | undefined }>();
  readonly #ranges = new Map<string, RangeRead>();
  readonly #writes = new Map<string, Write>();
  #prefetch: Prefetch | undefined;
  /** Serializable levels: the revision every read of this attempt is served at. */
  #pin: number | undefined;
  /** Serializable levels: the first read in flight, which fixes `#pin`; concurrent reads wait for it. */
  #pinning: Promise<unknown> | undefined;
  #live = true;
  doomed = false;

  constructor(kv: KV, isolation: Isolation, attempt: number, signal: AbortSignal, prefetch?: Prefetch) {
    this.#kv = kv;
    this.isolation = isolation;
    this.attempt = attempt;
    this.signal = signal;
    this.#prefetch = prefetch;
  }

  async get(key: Bytes, opts?: CallOptions): Promise<string | undefined> {
    const v = await this.getBytes(key, opts);
    return v === undefined ? undefined : toText(v);
  }

  async getBytes(key: Bytes, opts: CallOptions = {}): Promise<Uint8Array | undefined> {
    const k = toBytes(key);
    this.#check();
    const w = this.#writes.get(id(k));
    if (w) return w.value;
    return (await this.#readKey(k, opts.signal))?.value;
  }

  async rev(key: Bytes, opts: CallOptions = {}): Promise<number> {
    return (await this.#readKey(toBytes(key), opts.signal))?.modRevision ?? 0;
  }

  async range(key: Bytes, opts: StmRangeOptions = {}): Promise<StmEntry[]> {
    if (opts.end !== undefined && opts.fromKey)
      throw new ConclaveError(ErrorCode.InvalidArgument, 'stm range: use `end` or `fromKey`, not both');
    const r = resolveRange(
      key,
      opts.end !== undefined ? { end: opts.end } : opts.fromKey ? { fromKey: true } : { prefix: true },
    );
    const rid = `${id(r.key)}\0${id(r.end)}`;
    this.#check();
    if (!this.#ranges.has(rid)) await this.#readRange(rid, r.key, r.end, opts.signal);
    return this.#view(r.key, r.end);
  }

  put(key: Bytes, value: Bytes, opts: { lease?: LeaseId } = {}): void {
    const k = toBytes(key);
    if (opts.lease !== undefined && typeof opts.lease !== 'bigint')
      throw new ConclaveError(ErrorCode.InvalidArgument, 'stm put: lease must be a bigint lease id');
    this.#check();
    this.#writes.set(id(k), { key: k, value: toBytes(value), lease: opts.lease });
    this.#checkBounds();
  }

  del(key: Bytes): void {
    const k = toBytes(key);
    this.#check();
    this.#writes.set(id(k), { key: k, value: undefined, lease: undefined });
    this.#checkBounds();
  }

  /** Ends the attempt: later calls on this handle throw. */
  end(): void {
    this.#live = false;
  }

  #check(): void {
    if (!this.#live)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'stm: the STM handle was used after its attempt ended (await every call in fn)',
      );
    this.signal.throwIfAborted();
  }

  /** The attempt's view of `[key, end)`: cached keys (first read wins) with buffered writes applied. */
  #view(key: Uint8Array, end: Uint8Array): StmEntry[] {
    const out = new Map<string, { k: Uint8Array; v: Uint8Array }>();
    for (const [i, c] of this.#keys)
      if (c.kv && inRange(c.key, key, end)) out.set(i, { k: c.key, v: c.kv.value });
    for (const [i, w] of this.#writes) {
      if (!inRange(w.key, key, end)) continue;
      if (w.value === undefined) out.delete(i);
      else out.set(i, { k: w.key, v: w.value });
    }
    return [...out.values()]
      .sort((a, b) => compareBytes(a.k, b.k))
      .map(({ k, v }) => ({ key: toText(k), value: toText(v), keyBytes: k, valueBytes: v }));
  }

  async #readKey(k: Uint8Array, signal: AbortSignal | undefined): Promise<KeyValue | undefined> {
    const i = id(k);
    this.#check();
    const cached = this.#keys.get(i);
    if (cached) return cached.kv;
    const pre = this.#usablePrefetch();
    if (pre?.keys.has(i)) {
      this.#takePin(pre.revision);
      return this.#cache(k, pre.keys.get(i));
    }
    const r = await this.#read(k, undefined, signal);
    // A concurrent read of the same key may have cached it meanwhile: its first read wins.
    const raced = this.#keys.get(i);
    return raced ? raced.kv : this.#cache(k, r.kvs[0]);
  }

  async #readRange(
    rid: string,
    key: Uint8Array,
    end: Uint8Array,
    signal: AbortSignal | undefined,
  ): Promise<void> {
    const prefetch = this.#usablePrefetch();
    const pre = prefetch?.ranges.get(rid);
    let kvs: KeyValue[];
    let revision: number;
    if (pre && prefetch) {
      revision = prefetch.revision;
      this.#takePin(revision);
      kvs = pre;
    } else {
      const r = await this.#read(key, end, signal);
      if (r.more || r.kvs.length > stmRangeKeysMax) {
        throw new ConclaveError(
          ErrorCode.RequestTooLarge,
          `stm range ${toText(key)}: more than stmRangeKeysMax (${stmRangeKeysMax}) keys; read a narrower range`,
          { details: { key: toText(key), keysMax: stmRangeKeysMax } },
        );
      }
      kvs = r.kvs;
      // A read at a past revision reports the store's current revision in its header (etcd), so
      // the range's check must use the revision it was read at: the snapshot's, when pinned.
      revision = this.#pin ?? r.revision;
    }
    this.#check();
    // A key cached earlier keeps its first-read value (repeatable reads); new keys join the cache.
    for (const kv of kvs) if (!this.#keys.has(id(kv.key))) this.#keys.set(id(kv.key), { key: kv.key, kv });
    this.#ranges.set(rid, { key, end, revision });
    this.#checkBounds();
  }

  /**
   * One read from the store: at the pinned revision for the serializable levels (the first read
   * fixes it, and concurrent reads of `fn` wait for it), else at the current revision. Unlike Go's
   * STM, which reads member-locally (`WithSerializable`) under RepeatableReads and ReadCommitted,
   * every read here is linearizable: a ReadCommitted commit has no check, so a stale read would
   * silently overwrite data this very client had already committed.
   */
  async #read(
    key: Uint8Array,
    end: Uint8Array | undefined,
    signal: AbortSignal | undefined,
  ): Promise<RangeResult> {
    const sig = signal ? AbortSignal.any([signal, this.signal]) : this.signal;
    const limit = end ? stmRangeKeysMax + 1 : 0;
    if (!pinned(this.isolation)) {
      const r = await this.#kv.range(key, { end, limit, signal: sig });
      this.#check();
      return r;
    }
    // Bounded: each turn either waits for another read's pin (which settles) or becomes the pinner.
    while (this.#pin === undefined && this.#pinning) {
      await this.#pinning.catch(() => undefined);
      this.#check();
    }
    try {
      if (this.#pin !== undefined) {
        // Not member-local as Go's: a lagging member could refuse the pinned revision as future.
        const r = await this.#kv.range(key, { end, limit, revision: this.#pin, signal: sig });
        this.#check();
        return r;
      }
      const first = this.#kv.range(key, { end, limit, signal: sig });
      this.#pinning = first;
      const r = await first;
      this.#check();
      this.#takePin(r.revision);
      return r;
    } catch (err) {
      if (!ConclaveError.is(err, ErrorCode.Compacted) || this.signal.aborted) throw err;
      // The snapshot this attempt reads from is gone: it can never commit consistently, so retry.
      this.doomed = true;
      throw new AttemptDoomed(
        ErrorCode.Compacted,
        `stm: revision ${this.#pin} was compacted mid-attempt; retrying`,
        {
          cause: err,
        },
      );
    } finally {
      this.#pinning = undefined;
    }
  }

  #takePin(revision: number): void {
    if (pinned(this.isolation) && this.#pin === undefined) this.#pin = revision;
    // Prefetched reads are only of use while they belong to this attempt's snapshot.
    if (this.#prefetch && this.#prefetch.revision !== this.#pin) this.#prefetch = undefined;
  }

  /**
   * The previous attempt's re-reads, when they can serve as this attempt's snapshot: no other read
   * has fixed (or is fixing) a different pinned revision. etcd's Go STM mixes them with newer reads,
   * leaving the commit check to catch it; here `fn` never sees a view mixed from two revisions.
   */
  #usablePrefetch(): Prefetch | undefined {
    if (!this.#prefetch || this.#pinning) return undefined;
    return this.#pin === undefined || this.#pin === this.#prefetch.revision ? this.#prefetch : undefined;
  }

  #cache(k: Uint8Array, kv: KeyValue | undefined): KeyValue | undefined {
    this.#keys.set(id(k), { key: k, kv });
    this.#checkBounds();
    return kv;
  }

  /** Compares the commit will need under this isolation level. */
  #compareCount(): number {
    if (this.isolation === Isolation.ReadCommitted) return 0;
    const snapshotWrites = this.isolation === Isolation.SerializableSnapshot ? this.#writes.size : 0;
    return this.#keys.size + this.#ranges.size + snapshotWrites;
  }

  /** Fails as soon as the attempt could no longer commit in one txn, rather than at commit. */
  #checkBounds(): void {
    const compares = this.#compareCount();
    if (compares > stmCompareMax || this.#writes.size > stmCompareMax) {
      throw new ConclaveError(
        ErrorCode.TooManyOps,
        `stm: the transaction needs ${compares} compares and ${this.#writes.size} writes, more than stmCompareMax (${stmCompareMax}) per commit (each key read, each range and, under SerializableSnapshot, each key written costs one compare); split it or read fewer keys`,
        { details: { compares, writes: this.#writes.size, max: stmCompareMax } },
      );
    }
    if (this.#keys.size > stmReadKeysMax) {
      throw new ConclaveError(
        ErrorCode.RequestTooLarge,
        `stm: the transaction read more than stmReadKeysMax (${stmReadKeysMax}) keys; read fewer keys per transaction`,
      );
    }
  }

  /** Reads `keys` in one round trip (etcd's `WithPrefetch`), unless cached or prefetched. */
  async prefetchKeys(keys: Uint8Array[], signal: AbortSignal): Promise<void> {
    const pre = this.#prefetch;
    const missing: Uint8Array[] = [];
    for (const k of keys) {
      if (this.#keys.has(id(k))) continue;
      if (pre?.keys.has(id(k))) await this.#readKey(k, undefined);
      else missing.push(k);
    }
    if (missing.length === 0) return;
    if (missing.length > stmCompareMax)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `stm: prefetch lists more than ${stmCompareMax} keys`,
      );
    const revision = pinned(this.isolation) ? this.#pin : undefined;
    const t = await this.#kv.txn(
      {
        compare: [],
        success: missing.map((key) => ({ type: 'get', key, options: { revision } })),
        failure: [],
      },
      { signal },
    );
    this.#check();
    this.#takePin(t.revision);
    t.responses.forEach((r, n) => {
      const k = missing[n]!;
      if (r.type === 'get' && !this.#keys.has(id(k))) this.#cache(k, r.kvs[0]);
    });
  }

  /**
   * The commit txn: the isolation level's compares, the buffered writes on success and, for the
   * serializable levels, a re-read of everything read on failure (the next attempt's prefetch:
   * etcd's `stmSerializable.commit` saves that round trip the same way).
   */
  commitTxn(): { compare: Compare[]; success: Op[]; failure: Op[]; rereads: Array<string | RangeRead> } {
    const compare: Compare[] = [];
    const failure: Op[] = [];
    const rereads: Array<string | RangeRead> = [];
    if (this.isolation !== Isolation.ReadCommitted) {
      for (const [i, c] of this.#keys) {
        compare.push({ key: c.key, target: 'mod', result: '=', value: c.kv?.modRevision ?? 0 });
        if (pinned(this.isolation) && ![...this.#ranges.values()].some((r) => inRange(c.key, r.key, r.end))) {
          failure.push({ type: 'get', key: c.key });
          rereads.push(i);
        }
      }
      // A key created in a range after it was read has a mod revision above the read's.
      for (const r of this.#ranges.values()) {
        compare.push({ key: r.key, end: r.end, target: 'mod', result: '<', value: r.revision + 1 });
        if (pinned(this.isolation)) {
          failure.push({ type: 'get', key: r.key, options: { end: r.end, limit: stmRangeKeysMax + 1 } });
          rereads.push(r);
        }
      }
    }
    // SerializableSnapshot: no written key may have changed since the snapshot (Go: mod < first + 1).
    if (this.isolation === Isolation.SerializableSnapshot && this.#pin !== undefined) {
      for (const w of this.#writes.values())
        compare.push({ key: w.key, target: 'mod', result: '<', value: this.#pin + 1 });
    }
    const success: Op[] = [...this.#writes.values()].map((w) =>
      w.value === undefined
        ? { type: 'delete', key: w.key }
        : {
            type: 'put',
            key: w.key,
            value: w.value,
            options: w.lease === undefined ? {} : { lease: w.lease },
          },
    );
    return { compare, success, failure, rereads };
  }
}

/** Builds the next attempt's prefetch from a failed commit's failure-branch reads. */
function prefetchFrom(
  rereads: Array<string | RangeRead>,
  responses: ReadonlyArray<{ type: string } & Partial<RangeResult>>,
  revision: number,
): Prefetch {
  const p: Prefetch = { revision, keys: new Map(), ranges: new Map() };
  rereads.forEach((what, n) => {
    const r = responses[n];
    if (r?.type !== 'get' || !r.kvs) return;
    if (typeof what === 'string') p.keys.set(what, r.kvs[0]);
    else if (!r.more && r.kvs.length <= stmRangeKeysMax)
      p.ranges.set(`${id(what.key)}\0${id(what.end)}`, r.kvs);
  });
  return p;
}

/**
 * Runs `fn` as a transaction (see the module comment for the isolation levels) and commits its
 * writes; re-runs it on conflict. Resolves with `fn`'s value from the committed attempt. Rejects
 * with `retries-exhausted` when every attempt conflicted, with whatever `fn` threw (nothing is
 * committed), with the signal's reason when aborted, or with a KV error.
 */
export async function stm<T>(
  kv: KV,
  fn: (tx: STM) => T | Promise<T>,
  opts: StmOptions = {},
): Promise<StmResult<T>> {
  if (typeof fn !== 'function')
    throw new ConclaveError(ErrorCode.InvalidArgument, 'stm: fn must be a function');
  const isolation = opts.isolation ?? Isolation.SerializableSnapshot;
  if (!Object.values(Isolation).includes(isolation))
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `stm: isolation must be one of ${Object.values(Isolation).join(', ')}`,
    );
  const retriesMax = opts.retriesMax ?? stmRetriesMax;
  checkRetriesMax('stm', retriesMax);
  const prefetchKeys = (opts.prefetch ?? []).map(toBytes);
  const signal = opts.signal ?? new AbortController().signal;
  signal.throwIfAborted();

  let prefetch: Prefetch | undefined;
  let compacted = 0;
  for (let attempt = 1; attempt <= retriesMax + 1; attempt++) {
    await conflictBackoff(attempt, signal);
    const tx = new Attempt(kv, isolation, attempt, signal, prefetch);
    prefetch = undefined;
    let value: T;
    try {
      if (prefetchKeys.length > 0) await tx.prefetchKeys(prefetchKeys, signal);
      value = await fn(tx);
      signal.throwIfAborted();
    } catch (err) {
      if (signal.aborted) throw abortReason(signal);
      if (!tx.doomed) throw err;
      compacted++;
      continue;
    } finally {
      tx.end();
    }
    if (tx.doomed) {
      compacted++;
      continue;
    }
    const t = tx.commitTxn();
    const r = await kv.txn({ compare: t.compare, success: t.success, failure: t.failure }, { signal });
    if (r.succeeded) return { value, revision: r.revision, attempts: attempt };
    if (t.failure.length > 0) prefetch = prefetchFrom(t.rereads, r.responses, r.revision);
  }
  const attempts = retriesMax + 1;
  throw new ConclaveError(
    ErrorCode.RetriesExhausted,
    `stm: all ${attempts} attempts conflicted with concurrent writers (retriesMax ${retriesMax}${compacted ? `, ${compacted} of them hit compaction` : ''}); raise retriesMax, shrink the transaction, or reduce contention`,
    { details: { attempts, retriesMax, isolation } },
  );
}
