/**
 * namespace(kv, prefix): a KV whose keys are transparently prefixed — etcd's Go
 * `clientv3/namespace` (NewKV, NewWatcher, NewLease) for Conclave's contract.
 *
 * Layout: key `k` through the view is the key `prefix + k` in the underlying store, byte for byte,
 * so a key written through `namespace(kv, 'app-a/')` is the same key a Go client wrapped with
 * `namespace.NewKV(cli.KV, "app-a/")` (or etcd's `grpc-proxy --namespace=app-a/`) reads, and
 * `etcdctl get app-a/k` sees it. Every recipe works unchanged on a view: it only ever sees keys
 * inside the namespace.
 *
 * Translation (as the Go wrapper does it):
 * - single keys, range starts and explicit range ends get the prefix prepended;
 * - an "every key from here" end (`fromKey`, or an explicit `"\0"` end) becomes the end of the
 *   namespace (the smallest key greater than every key under the prefix), so a `fromKey` read never
 *   leaves the namespace; a `prefix` range is `[prefix + k, prefix + prefixEnd(k))`;
 * - txn compares and ops are translated the same way, nested txns included;
 * - every key in a result (range kvs, put/delete prev kvs, txn responses, watch events and their
 *   prev kvs) has the prefix stripped;
 * - `lease.timeToLive({ keys: true })` lists only the lease's keys under the prefix, stripped
 *   (a lease may also hold keys outside the namespace: they are not shown, as in Go).
 * Leases, revisions, `compact` and `status` are the store's own: a namespace is a key-space view,
 * not a separate store.
 *
 * One deliberate difference from the Go wrapper: for a prefix ending in 0xff bytes, Go's end of
 * the namespace keeps the length and wraps the 0xff bytes to 0x00 (`"a\xff"` → `"b\x00"`), which
 * also takes in the key `"b"` outside the namespace; here the end is etcd's `GetPrefixRangeEnd`
 * (`"b"`), which stays inside. For every key inside the namespace the two select the same keys.
 *
 * Closing the view closes the underlying KV (the view is the client its user holds, as a Go client
 * whose KV was replaced by the wrapper). To share one connection between several namespaces, keep
 * the connection and close it, not the views.
 */
import { ConclaveError, ErrorCode } from './errors.js';
import { concatBytes, EMPTY, prefixEnd, resolveRange, toBytes } from './keys.js';
import type { KV } from './kv.js';
import type {
  Bytes,
  CallOptions,
  Compare,
  DeleteOptions,
  DeleteResult,
  GetOptions,
  KeySelector,
  KeyValue,
  LeaseApi,
  Op,
  OpResponse,
  PutOptions,
  PutResult,
  RangeOptions,
  RangeResult,
  Txn,
  TxnResult,
  Watch,
  WatchBatch,
  WatchOptions,
} from './types.js';
import { checkBytes, checkKey, checkTxn } from './validate.js';

/** A KV view under a key prefix (see `namespace`). */
export interface NamespacedKV extends KV {
  /** The prefix every key of this view carries in the underlying store. */
  readonly namespace: Uint8Array;
  /** The KV this view wraps. */
  readonly underlying: KV;
}

/**
 * A view of `kv` in which every key is `prefix + key` in the underlying store, and every key in a
 * result has the prefix removed. `prefix` must not be empty. Views nest:
 * `namespace(namespace(kv, 'a/'), 'b/')` is the namespace `a/b/`.
 */
export function namespace(kv: KV, prefix: Bytes): NamespacedKV {
  if (typeof kv !== 'object' || kv === null || typeof kv.range !== 'function')
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'namespace: kv must be a KV (from connect() or a backend)',
    );
  const pfx = checkBytes('namespace prefix', prefix).slice();
  if (pfx.length === 0)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'namespace prefix: must not be empty (an empty namespace is the KV itself: use it directly)',
      { details: { argument: 'prefix' } },
    );
  return new Namespaced(kv, pfx);
}

/** `[start, end)` in the underlying store for a key (and selector) of the view; `end` empty: one key. */
function interval(
  pfx: Uint8Array,
  key: Bytes,
  sel: KeySelector | undefined,
): { key: Uint8Array; end: Uint8Array } {
  const r = resolveRange(key, sel);
  const start = concatBytes(pfx, r.key);
  if (r.end.length === 0) return { key: start, end: EMPTY };
  // etcd's "\0" end (every key >= start) is bounded by the end of the namespace.
  if (r.end.length === 1 && r.end[0] === 0) return { key: start, end: prefixEnd(pfx) };
  return { key: start, end: concatBytes(pfx, r.end) };
}

/** A single key (no `end`/`prefix`/`fromKey`) must not be empty, as for the unwrapped KV. */
function isSingle(sel: KeySelector | undefined): boolean {
  return !sel || (!sel.prefix && !sel.fromKey && sel.end === undefined);
}

/** The options without the key selector, with the translated `end` (absent for a single key). */
function withEnd<T extends KeySelector>(opts: T, end: Uint8Array): T {
  const { prefix: _p, fromKey: _f, end: _e, ...rest } = opts;
  return (end.length === 0 ? rest : { ...rest, end }) as T;
}

class Namespaced implements NamespacedKV {
  readonly namespace: Uint8Array;
  readonly underlying: KV;
  readonly lease: LeaseApi;

  constructor(kv: KV, pfx: Uint8Array) {
    this.underlying = kv;
    this.namespace = pfx;
    this.lease = {
      grant: (ttl, o) => kv.lease.grant(ttl, o),
      revoke: (id, o) => kv.lease.revoke(id, o),
      keepAliveOnce: (id, o) => kv.lease.keepAliveOnce(id, o),
      list: (o) => kv.lease.list(o),
      timeToLive: async (id, o) => {
        const r = await kv.lease.timeToLive(id, o);
        // Keys outside the namespace are not this view's to show (Go's leasePrefix drops them too).
        const keys = r.keys.filter((k) => this.#inside(k)).map((k) => k.subarray(pfx.length));
        return { ...r, keys };
      },
    };
  }

  #inside(k: Uint8Array): boolean {
    const p = this.namespace;
    if (k.length < p.length) return false;
    for (let i = 0; i < p.length; i++) if (k[i] !== p[i]) return false;
    return true;
  }

  #strip(kv: KeyValue): KeyValue {
    if (!this.#inside(kv.key))
      // Every request is bounded by the namespace, so the store returned a key it was not asked for.
      throw new ConclaveError(
        ErrorCode.Internal,
        'namespace: the store returned a key outside the namespace; this is a bug in the backend, please report it',
      );
    return {
      key: kv.key.subarray(this.namespace.length),
      createRevision: kv.createRevision,
      modRevision: kv.modRevision,
      version: kv.version,
      value: kv.value,
      lease: kv.lease,
    };
  }

  #range(r: RangeResult): RangeResult {
    return { kvs: r.kvs.map((k) => this.#strip(k)), count: r.count, more: r.more, revision: r.revision };
  }

  #put(r: PutResult): PutResult {
    return r.prevKv ? { revision: r.revision, prevKv: this.#strip(r.prevKv) } : { revision: r.revision };
  }

  #delete(r: DeleteResult): DeleteResult {
    return { revision: r.revision, deleted: r.deleted, prevKvs: r.prevKvs.map((k) => this.#strip(k)) };
  }

  #txnResult(r: TxnResult): TxnResult {
    return {
      succeeded: r.succeeded,
      revision: r.revision,
      responses: r.responses.map((o) => this.#opResponse(o)),
    };
  }

  #opResponse(o: OpResponse): OpResponse {
    switch (o.type) {
      case 'get':
        return { type: 'get', ...this.#range(o) };
      case 'put':
        return { type: 'put', ...this.#put(o) };
      case 'delete':
        return { type: 'delete', ...this.#delete(o) };
      case 'txn':
        return { type: 'txn', ...this.#txnResult(o) };
    }
  }

  /** `key` and its selector in the store; `argument` names the key in error messages. */
  #selected(
    argument: string,
    key: Bytes,
    sel: KeySelector | undefined,
  ): { key: Uint8Array; end: Uint8Array } {
    checkBytes(argument, key);
    // An empty single key would otherwise address the prefix itself; the unwrapped KV refuses it.
    if (isSingle(sel)) checkKey(argument, key);
    return interval(this.namespace, key, sel);
  }

  #txn(t: Txn): Txn {
    return {
      compare: (t.compare ?? []).map((c) => this.#compare(c)),
      success: (t.success ?? []).map((o) => this.#op(o)),
      failure: (t.failure ?? []).map((o) => this.#op(o)),
    };
  }

  #compare(c: Compare): Compare {
    // A compare on a range checks every key in it; a single-key compare is never empty-checked
    // (the unwrapped KV does not check it either).
    const r = interval(this.namespace, c.key, c);
    return { ...withEnd(c, r.end), key: r.key } as Compare;
  }

  #op(op: Op): Op {
    switch (op.type) {
      case 'get': {
        const o = op.options ?? {};
        const r = this.#selected('txn op key', op.key, o);
        return { type: 'get', key: r.key, options: withEnd(o, r.end) };
      }
      case 'delete': {
        const o = op.options ?? {};
        const r = this.#selected('txn op key', op.key, o);
        return { type: 'delete', key: r.key, options: withEnd(o, r.end) };
      }
      case 'put':
        return { ...op, key: concatBytes(this.namespace, toBytes(op.key)) };
      case 'txn':
        return { type: 'txn', txn: this.#txn(op.txn) };
    }
  }

  async get(key: Bytes, opts?: GetOptions): Promise<KeyValue | undefined> {
    checkKey('key', key);
    const kv = await this.underlying.get(concatBytes(this.namespace, toBytes(key)), opts);
    return kv ? this.#strip(kv) : undefined;
  }

  async range(key: Bytes, opts: RangeOptions = {}): Promise<RangeResult> {
    const r = this.#selected('key', key, opts);
    return this.#range(await this.underlying.range(r.key, withEnd(opts, r.end)));
  }

  async put(key: Bytes, value: Bytes, opts?: PutOptions): Promise<PutResult> {
    checkKey('key', key);
    return this.#put(await this.underlying.put(concatBytes(this.namespace, toBytes(key)), value, opts));
  }

  async delete(key: Bytes, opts: DeleteOptions = {}): Promise<DeleteResult> {
    const r = this.#selected('key', key, opts);
    return this.#delete(await this.underlying.delete(r.key, withEnd(opts, r.end)));
  }

  async txn(t: Txn, opts?: CallOptions): Promise<TxnResult> {
    // Validate the caller's txn as written (messages name its paths), then translate it.
    checkTxn(t);
    return this.#txnResult(await this.underlying.txn(this.#txn(t), opts));
  }

  watch(key: Bytes, opts: WatchOptions = {}): Watch {
    const r = this.#selected('key', key, opts);
    const inner = this.underlying.watch(r.key, withEnd(opts, r.end));
    const strip = (b: WatchBatch): WatchBatch => ({
      ...b,
      events: b.events.map((e) =>
        e.prevKv
          ? { type: e.type, kv: this.#strip(e.kv), prevKv: this.#strip(e.prevKv) }
          : { type: e.type, kv: this.#strip(e.kv) },
      ),
    });
    return {
      ready: inner.ready,
      close: () => inner.close(),
      [Symbol.asyncDispose]: () => inner.close(),
      async *[Symbol.asyncIterator]() {
        for await (const b of inner) yield strip(b);
      },
    };
  }

  compact(revision: number, opts?: Parameters<KV['compact']>[1]): Promise<void> {
    return this.underlying.compact(revision, opts);
  }

  status(opts?: CallOptions): ReturnType<KV['status']> {
    return this.underlying.status(opts);
  }

  close(): Promise<void> {
    return this.underlying.close();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
