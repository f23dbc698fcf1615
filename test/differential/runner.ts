/**
 * Runs a differential sequence on one KV and returns normalized results: everything a client can
 * observe, with the parts that legitimately differ between two stores taken out — absolute
 * revisions (made relative to the run's start), the run's prefix (stripped from keys) and lease
 * ids (mapped back to the run's small indices). What remains must be identical on etcd and on the
 * embedded store.
 */
import { ConclaveError } from '../../src/errors.js';
import { toText } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import type {
  Compare,
  KeySelector,
  KeyValue,
  Op,
  OpResponse,
  RangeOptions,
  RangeResult,
  Txn,
  TxnResult,
  WatchEvent,
} from '../../src/types.js';
import {
  type CompareSpec,
  LEASE_TTL_SECONDS,
  LEASES,
  type OpSpec,
  type RangeSpec,
  type RevRef,
  type Sel,
  type TxnOpSpec,
  type TxnSpec,
} from './model.js';

/** How long the end-of-run history watch may take before it is recorded as a timeout. */
export const historyTimeoutMs = 10_000;

/** One run's identity: its key prefix and lease id base (the same on both stores). */
export interface RunIds {
  /** Keys of the run are `prefix + name`; zero-padded so later runs sort after earlier ones. */
  readonly prefix: string;
  /** Where the run's start marker is written (sorts before every key of the run). */
  readonly startKey: string;
  readonly leaseBase: bigint;
}

export function runIds(n: number): RunIds {
  const p = `dif/${String(n).padStart(6, '0')}`;
  return { prefix: `${p}/`, startKey: `${p}-start`, leaseBase: 0x10000n + BigInt(n) * 16n };
}

export interface RunOutcome {
  /** Normalized result of each operation, in order. */
  readonly steps: unknown[];
  /** The run's events replayed by a watch from its start (or the watch's error). */
  readonly history: unknown;
}

type Norm = Record<string, unknown>;

/** Bytes as text (a non-Uint8Array here is a client bug, and `toText` throws on it). */
function text(b: Uint8Array): string {
  return toText(b);
}

class Runner {
  /** The revision of the run's start marker: revisions are reported relative to it. */
  start = 0;
  /** The latest revision this run observed (the store has no other writer while it runs). */
  cur = 0;
  /** The revision of the run's last compaction (0 if none). */
  compacted = 0;
  constructor(
    readonly kv: KV,
    readonly ids: RunIds,
  ) {}

  key(k: string): string {
    return this.ids.prefix + k;
  }

  lease(i: number): bigint {
    return i === 0 ? 0n : this.ids.leaseBase + BigInt(i);
  }

  sel(s: Sel): [string, KeySelector] {
    switch (s.kind) {
      case 'one':
        return [this.key(s.key), {}];
      case 'prefix':
        return [this.key(s.key), { prefix: true }];
      case 'range':
        return [this.key(s.key), { end: this.key(s.end) }];
      case 'from':
        return [this.key(s.key), { fromKey: true }];
    }
  }

  rev(r: RevRef): number {
    switch (r.at) {
      case 'current':
        return this.cur;
      case 'back':
        return Math.max(this.start, this.cur - r.n);
      case 'start':
        return this.start + r.n;
      case 'future':
        return this.cur + r.n;
    }
  }

  seen(revision: number): void {
    if (revision > this.cur) this.cur = revision;
  }

  // ---- normalization

  rel(revision: number): number | null {
    return revision === 0 ? null : revision - this.start;
  }

  nkey(k: Uint8Array): string {
    const t = text(k);
    return t.startsWith(this.ids.prefix) ? t.slice(this.ids.prefix.length) : `<outside the run: ${t}>`;
  }

  nlease(id: bigint): number | string {
    if (id === 0n) return 0;
    const i = id - this.ids.leaseBase;
    return i >= 1n && i <= BigInt(LEASES.length) ? Number(i) : `<foreign lease ${id}>`;
  }

  nkv(kv: KeyValue | undefined): Norm | undefined {
    if (!kv) return undefined;
    return {
      key: this.nkey(kv.key),
      value: text(kv.value),
      create: this.rel(kv.createRevision),
      mod: this.rel(kv.modRevision),
      version: kv.version,
      lease: this.nlease(kv.lease),
    };
  }

  nrange(r: RangeResult): Norm {
    this.seen(r.revision);
    return {
      kvs: r.kvs.map((kv) => this.nkv(kv)),
      count: r.count,
      more: r.more,
      revision: this.rel(r.revision),
    };
  }

  /** Responses inside a nested txn carry the txn's revision too (compared like the others). */
  nresponse(r: OpResponse, _nested: boolean): Norm {
    const revision = this.rel(r.revision);
    switch (r.type) {
      case 'get':
        return { type: 'get', ...this.nrange(r), revision };
      case 'put':
        return { type: 'put', revision, prevKv: this.nkv(r.prevKv) };
      case 'delete':
        return {
          type: 'delete',
          revision,
          deleted: r.deleted,
          prevKvs: r.prevKvs.map((kv) => this.nkv(kv)),
        };
      case 'txn':
        return { type: 'txn', ...this.ntxn(r, true), revision };
    }
  }

  ntxn(r: TxnResult, nested = false): Norm {
    if (!nested) this.seen(r.revision);
    return {
      succeeded: r.succeeded,
      revision: this.rel(r.revision),
      responses: r.responses.map((x) => this.nresponse(x, nested)),
    };
  }

  nerror(err: unknown): Norm {
    if (err instanceof ConclaveError) return { error: err.code };
    return { thrown: err instanceof Error ? `${err.name}: ${err.message}` : String(err) };
  }

  // ---- building requests

  rangeOptions(r: RangeSpec): [string, Omit<RangeOptions, 'signal'>] {
    const [key, s] = this.sel(r.sel);
    const o: Omit<RangeOptions, 'signal'> = { ...s };
    if (r.revision) o.revision = this.rev(r.revision);
    if (r.limit !== undefined) o.limit = r.limit;
    if (r.sort) o.sort = { ...r.sort };
    if (r.keysOnly) o.keysOnly = true;
    if (r.countOnly) o.countOnly = true;
    if (r.minMod !== undefined) o.minModRevision = this.start + r.minMod;
    if (r.maxMod !== undefined) o.maxModRevision = this.start + r.maxMod;
    if (r.minCreate !== undefined) o.minCreateRevision = this.start + r.minCreate;
    if (r.maxCreate !== undefined) o.maxCreateRevision = this.start + r.maxCreate;
    return [key, o];
  }

  compare(c: CompareSpec): Compare {
    const [key, s] = this.sel(c.sel);
    const base = { key, ...s, result: c.result };
    switch (c.target) {
      case 'version':
        return { ...base, target: 'version', value: c.value };
      case 'create':
      case 'mod':
        return { ...base, target: c.target, value: c.rel === null ? 0 : this.start + c.rel };
      case 'value':
        return { ...base, target: 'value', value: c.value };
      case 'lease':
        return { ...base, target: 'lease', value: this.lease(c.lease) };
    }
  }

  txnOp(op: TxnOpSpec): Op {
    switch (op.type) {
      case 'get': {
        const [key, options] = this.rangeOptions(op.range);
        return { type: 'get', key, options };
      }
      case 'put': {
        const options: NonNullable<Extract<Op, { type: 'put' }>['options']> = {};
        if (op.prevKv) options.prevKv = true;
        if (op.lease !== undefined) options.lease = this.lease(op.lease);
        return { type: 'put', key: this.key(op.key), value: op.value, options };
      }
      case 'delete': {
        const [key, s] = this.sel(op.sel);
        return { type: 'delete', key, options: op.prevKv ? { ...s, prevKv: true } : s };
      }
      case 'txn':
        return { type: 'txn', txn: this.txn(op.txn) };
    }
  }

  txn(t: TxnSpec): Txn {
    return {
      compare: t.compare.map((c) => this.compare(c)),
      success: t.success.map((o) => this.txnOp(o)),
      failure: t.failure.map((o) => this.txnOp(o)),
    };
  }

  // ---- running

  async step(op: OpSpec): Promise<unknown> {
    try {
      return await this.#step(op);
    } catch (err) {
      return this.nerror(err);
    }
  }

  async #step(op: OpSpec): Promise<unknown> {
    const kv = this.kv;
    switch (op.op) {
      case 'put': {
        const o: { prevKv?: boolean; lease?: bigint; ignoreValue?: boolean; ignoreLease?: boolean } = {};
        if (op.prevKv) o.prevKv = true;
        if (op.lease !== undefined) o.lease = this.lease(op.lease);
        if (op.ignoreValue) o.ignoreValue = true;
        if (op.ignoreLease) o.ignoreLease = true;
        // etcd refuses a value with ignoreValue and a lease with ignoreLease: send none then.
        if (op.ignoreLease) delete o.lease;
        const r = await kv.put(this.key(op.key), op.ignoreValue ? '' : op.value, o);
        this.seen(r.revision);
        return { revision: this.rel(r.revision), prevKv: this.nkv(r.prevKv) };
      }
      case 'delete': {
        const [key, s] = this.sel(op.sel);
        const r = await kv.delete(key, op.prevKv ? { ...s, prevKv: true } : s);
        this.seen(r.revision);
        return {
          revision: this.rel(r.revision),
          deleted: r.deleted,
          prevKvs: op.prevKv ? r.prevKvs.map((kv) => this.nkv(kv)) : 'not asked',
        };
      }
      case 'range': {
        const [key, o] = this.rangeOptions(op.range);
        return this.nrange(await kv.range(key, o));
      }
      case 'get': {
        const o: { revision?: number; keysOnly?: boolean } = {};
        if (op.revision) o.revision = this.rev(op.revision);
        if (op.keysOnly) o.keysOnly = true;
        return { kv: this.nkv(await kv.get(this.key(op.key), o)) ?? 'absent' };
      }
      case 'txn':
        return this.ntxn(await kv.txn(this.txn(op.txn)));
      case 'compact': {
        const at = this.rev(op.revision);
        await kv.compact(at);
        this.compacted = at;
        return { compacted: this.rel(at) };
      }
      case 'grant': {
        const g = await kv.lease.grant(LEASE_TTL_SECONDS, { id: this.lease(op.lease) });
        return { id: this.nlease(g.id), ttl: g.ttlSeconds };
      }
      case 'revoke': {
        const r = await kv.lease.revoke(this.lease(op.lease));
        this.seen(r.revision);
        return { revision: this.rel(r.revision) };
      }
      case 'keepAlive': {
        const r = await kv.lease.keepAliveOnce(this.lease(op.lease));
        return { id: this.nlease(r.id), ttl: r.ttlSeconds };
      }
      case 'timeToLive': {
        const t = await kv.lease.timeToLive(this.lease(op.lease), { keys: !!op.keys });
        return {
          id: this.nlease(t.id),
          // The remaining time depends on when each store was asked: only its sign is compared.
          ttl: t.ttlSeconds > 0 ? 'positive' : t.ttlSeconds,
          granted: t.grantedTtlSeconds,
          keys: t.keys.map((k) => this.nkey(k)).sort(),
        };
      }
      case 'leases': {
        const all = await kv.lease.list();
        return all
          .map((id) => this.nlease(id))
          .filter((x) => typeof x === 'number')
          .sort();
      }
    }
  }

  /**
   * Every event of the run, replayed by a watch from the revision after its start. When the run
   * compacted at exactly that revision, the watch starts one later: what etcd replays at the
   * compaction revision depends on whether its background compaction has run yet (a put and a
   * delete of a key at that revision come back or not), so only later revisions are compared.
   */
  async history(): Promise<unknown> {
    if (this.cur <= this.start) return 'no writes';
    const from = this.start + 1 + (this.compacted === this.start + 1 ? 1 : 0);
    if (from > this.cur) return 'no writes after the compaction revision';
    const w = this.kv.watch(this.ids.prefix, { prefix: true, startRevision: from, prevKv: true });
    const events: WatchEvent[] = [];
    const it = w[Symbol.asyncIterator]();
    const deadline = Date.now() + historyTimeoutMs;
    try {
      // Every revision after the start was made by this run, so the replay ends at `cur`.
      while (events.at(-1)?.kv.modRevision !== this.cur) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const r = await Promise.race([
          it.next(),
          new Promise<'timeout'>((res) => {
            timer = setTimeout(() => res('timeout'), Math.max(0, deadline - Date.now()));
          }),
        ]);
        clearTimeout(timer);
        if (r === 'timeout') return { timeout: events.length };
        if (r.done) return { ended: events.length };
        events.push(...r.value.events);
      }
      return events.map((e) => ({
        type: e.type,
        kv: this.nkv(e.kv),
        prevKv: this.nkv(e.prevKv),
      }));
    } catch (err) {
      if (err instanceof ConclaveError && err.compactRevision !== undefined)
        return { error: err.code, compactRevision: this.rel(err.compactRevision) };
      return this.nerror(err);
    } finally {
      await w.close();
    }
  }

  /** Revokes the run's leases so none expires (and deletes keys) during a later run. */
  async cleanup(): Promise<void> {
    for (const i of LEASES) {
      try {
        await this.kv.lease.revoke(this.lease(i));
      } catch (err) {
        if (!(err instanceof ConclaveError)) throw err;
      }
    }
  }
}

/**
 * Runs `ops` on `kv` as run `ids`: a start marker, the ops, the history replay, then cleanup.
 * `beforeHistory` runs between the ops and the replay (the embedded side uses it to make the
 * replay come from the MVCC records rather than a watch hub's cache of live events).
 */
export async function runSequence(
  kv: KV,
  ids: RunIds,
  ops: readonly OpSpec[],
  beforeHistory?: () => void,
): Promise<RunOutcome> {
  const r = new Runner(kv, ids);
  // The marker's revision is the run's origin; it is above every earlier compaction, so the
  // run's own compactions and past reads behave the same on a store that ran other runs before.
  const marker = await kv.put(ids.startKey, 'start');
  r.start = marker.revision;
  r.cur = marker.revision;
  try {
    const steps: unknown[] = [];
    for (const op of ops) steps.push(await r.step(op));
    beforeHistory?.();
    const history = await r.history();
    return { steps, history };
  } finally {
    await r.cleanup();
  }
}

/** The first step where two outcomes differ, described for a human; undefined when they agree. */
export function firstDifference(
  ops: readonly OpSpec[],
  reference: RunOutcome,
  other: RunOutcome,
  names: [string, string],
): string | undefined {
  const show = (x: unknown) => JSON.stringify(x);
  for (let i = 0; i < ops.length; i++) {
    const a = show(reference.steps[i]);
    const b = show(other.steps[i]);
    if (a !== b) {
      const before = ops
        .slice(0, i)
        .map((op, j) => `  #${j} ${show(op)} → ${show(reference.steps[j])}`)
        .join('\n');
      return [
        `step #${i} differs: ${show(ops[i])}`,
        `  ${names[0]}: ${a}`,
        `  ${names[1]}: ${b}`,
        'after:',
        before || '  (nothing)',
      ].join('\n');
    }
  }
  const a = show(reference.history);
  const b = show(other.history);
  if (a !== b) return `the history replayed by a watch differs:\n  ${names[0]}: ${a}\n  ${names[1]}: ${b}`;
  return undefined;
}
