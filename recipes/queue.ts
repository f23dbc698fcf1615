/**
 * Queue and PriorityQueue: at-most-once, multi-producer multi-consumer queues with the key layouts
 * and algorithms of etcd's Go `client/v3/experimental/recipes` (queue.go, priority_queue.go,
 * key.go), so Conclave and Go clients on one etcd produce and consume the same items.
 *
 * Queue layout: each item is one key `name + "/" + <unix time in nanoseconds, decimal>` holding the
 * value, created only if absent (Go's `newUniqueKV`). The queue is ordered by the keys' mod
 * revisions, oldest first (Go's `WithFirstRev`), not by the key text: the timestamp only makes keys
 * unique.
 *
 * PriorityQueue layout: each item is `name + "/" + %05d(priority) + "/" + %016d(sequence)`, and every
 * enqueue also writes the bookkeeping key `"__" + name + "/" + %05d(priority)` in the same txn (Go's
 * `newSequentialKV`). The queue is ordered by key: lower priority numbers first, then by sequence
 * number (FIFO within one priority).
 *
 * Delivery: a consumer claims an item by deleting its key in a txn guarded on the mod revision it
 * read (Go's `claimFirstKey`/`deleteRevKey`), so exactly one consumer wins each item. The claim is the
 * delivery: an item whose consumer crashes after the claim is gone (at most once). Use `WorkQueue`
 * for at-least-once delivery with acknowledgements.
 */
import { Err, Ok, type Result } from 'ts-results-es';
import { abortReason, ConclaveError, ErrorCode } from '../src/errors.js';
import { compareBytes, EMPTY, toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { Bytes, CallOptions, KeyValue, WatchEvent } from '../src/types.js';
import { checkName } from './internal/check.js';
import { backoffMs, sleep } from './internal/timing.js';

/** Keys read per dequeue attempt: a consumer that loses the race for the oldest item tries the next. */
export const queueClaimBatchMax = 8;
/**
 * Reads of a non-empty queue within one `dequeue()`/`tryDequeue()` in which every claim was lost to
 * other consumers, before the call fails `retries-exhausted` (each lost round means that other
 * consumers took at least one item each, so the system progresses; only this caller starves).
 */
export const queueClaimRoundsMax = 64;
/** Attempts of a Queue enqueue whose timestamp key already existed (another producer, same nanosecond). */
export const queueEnqueueAttemptsMax = 8;
/**
 * Attempts of a PriorityQueue enqueue that lost the race for the next sequence number of its
 * priority to another producer (each lost attempt means another producer enqueued).
 */
export const priorityEnqueueAttemptsMax = 256;
/** Longest jittered pause (ms) between two PriorityQueue enqueue attempts. */
export const priorityEnqueueBackoffMsMax = 32;
/** The highest priority number (Go's `uint16` priority). Lower numbers are dequeued first. */
export const priorityMax = 65_535;

/** A dequeued item. Its key no longer exists: the claim deleted it. */
export interface QueueItem {
  /** The item's key, e.g. `jobs/1712345678901234567` or `jobs/00003/0000000000000012`. */
  readonly key: string;
  readonly value: Uint8Array;
  /** The revision at which the item was enqueued (its key's create revision). */
  readonly createRevision: number;
  /** The revision at which this consumer claimed (deleted) it. */
  readonly revision: number;
  /** The value decoded as UTF-8. */
  text(): string;
}

/** A dequeued PriorityQueue item. */
export interface PriorityQueueItem extends QueueItem {
  /** Parsed from the key; `NaN` for a key under the queue that does not follow the layout. */
  readonly priority: number;
}

/** `tryDequeue()` found nothing to claim. */
export interface QueueEmpty {
  /** The store revision at which the queue was seen empty. */
  readonly revision: number;
}

/** Where an enqueued item was written. */
export interface EnqueueResult {
  readonly key: string;
  /** The revision of the write (the item's create revision). */
  readonly revision: number;
}

/** The outcome of one read-and-claim round. */
type Round<I> =
  | { kind: 'item'; item: I }
  | { kind: 'empty'; revision: number }
  | { kind: 'lost'; revision: number; more: boolean };

/**
 * What Queue and PriorityQueue share: claiming the first item, and waiting watch-driven for new
 * ones. They differ only in how the queue is ordered (mod revision vs key) and how items are named.
 */
abstract class ClaimQueue<I extends QueueItem> {
  readonly kv: KV;
  readonly name: string;
  /** `name + "/"`: every item key is under it. */
  readonly #prefix: Uint8Array;
  readonly #what: string;
  readonly #orderByKey: boolean;

  constructor(kind: string, kv: KV, name: string, orderByKey: boolean) {
    checkName(`${kind}: name`, name);
    this.kv = kv;
    this.name = name;
    this.#prefix = toBytes(`${name}/`);
    this.#what = `${kind} ${name}`;
    this.#orderByKey = orderByKey;
  }

  /** @internal The dequeued item built from its claimed key. */
  protected abstract item(kv: KeyValue, value: Uint8Array, revision: number): I;

  /**
   * Claims the first item if there is one: `Ok(item)`, or `Err(QueueEmpty)` when the queue is
   * empty. Never waits for new items. Items that other consumers claim first are skipped; after
   * `limits.queue.claimRoundsMax` rounds lost entirely it fails `retries-exhausted`.
   */
  async tryDequeue(opts: CallOptions = {}): Promise<Result<I, QueueEmpty>> {
    for (let round = 1; ; round++) {
      opts.signal?.throwIfAborted();
      const r = await this.#round(opts.signal);
      if (r.kind === 'item') return Ok(r.item);
      if (r.kind === 'empty') return Err({ revision: r.revision });
      this.#checkRounds(round);
    }
  }

  /**
   * Claims the first item, waiting (watch-driven, no polling) until one is enqueued if the queue is
   * empty. Aborting rejects with `signal.reason` and consumes nothing — unless the abort arrives
   * while a claim txn is in flight: the claim is not abortable (aborting it would leave unknown
   * whether the item was taken, and so could lose it), and if it succeeds the item is returned.
   */
  async dequeue(opts: CallOptions = {}): Promise<I> {
    const { signal } = opts;
    for (let round = 1; ; round++) {
      signal?.throwIfAborted();
      const r = await this.#round(signal);
      if (r.kind === 'item') return r.item;
      if (r.kind === 'lost' && r.more) {
        // Other consumers took everything we read, and more items remain: read them.
        this.#checkRounds(round);
        continue;
      }
      // Empty, or every item there was is taken: any later item is a put after the read. A lost
      // round read the whole queue (no `more`), so waiting from after the read misses nothing.
      const item = await this.#waitAndClaim(r.revision + 1, signal);
      if (item) return item;
      // The watch's history was compacted or the watch ended: re-read the present.
      this.#checkRounds(round);
    }
  }

  #checkRounds(round: number): void {
    if (round < queueClaimRoundsMax) return;
    throw new ConclaveError(
      ErrorCode.RetriesExhausted,
      `${this.#what}: other consumers took every item this dequeue tried to claim, ${round} times in a row (queueClaimRoundsMax); retry, or use fewer consumers`,
      { retryable: true },
    );
  }

  /** One read of the first `limits.queue.claimBatchMax` keys (without values), then claims in order. */
  async #round(signal: AbortSignal | undefined): Promise<Round<I>> {
    const r = await this.kv.range(this.#prefix, {
      prefix: true,
      limit: queueClaimBatchMax,
      keysOnly: true,
      // Key order is the store's natural order: asking for no sort lets etcd stop at the limit
      // (any explicit sort makes etcd 3.4 read the whole range first, as the mod sort must).
      ...(this.#orderByKey ? {} : { sort: { target: 'mod', order: 'ascend' } as const }),
      signal,
    });
    if (r.kvs.length === 0) return { kind: 'empty', revision: r.revision };
    for (const kv of r.kvs) {
      // Re-check before each claim: past this point the claim runs to completion.
      signal?.throwIfAborted();
      const item = await this.#claim(kv, undefined);
      if (item) return { kind: 'item', item };
    }
    return { kind: 'lost', more: r.more, revision: r.revision };
  }

  /**
   * Deletes the key if it still has the mod revision we saw (Go's `deleteRevKey`): true for exactly
   * one consumer. Without a known value (the read was keys-only) the delete returns the value.
   * The txn gets no signal: once sent, its outcome must be known, or the item could be lost.
   */
  async #claim(kv: KeyValue, value: Uint8Array | undefined): Promise<I | undefined> {
    const t = await this.kv.txn({
      compare: [{ key: kv.key, target: 'mod', result: '=', value: kv.modRevision }],
      success: [{ type: 'delete', key: kv.key, options: { prevKv: value === undefined } }],
      failure: [],
    });
    if (!t.succeeded) return undefined;
    const res = t.responses[0];
    const prev = res?.type === 'delete' ? res.prevKvs[0] : undefined;
    return this.item(kv, value ?? prev?.value ?? EMPTY, t.revision);
  }

  /**
   * Watches the queue from `from` (inclusive) and tries to claim every new item, oldest first
   * (Queue) or in key order within one batch (PriorityQueue), until one claim succeeds. Resolves
   * `undefined` when the caller must re-read (history compacted, the watch ended by itself, or
   * more items appeared before the watch than one read takes). Every waiting consumer tries every
   * new item (as Go): one wins, the others keep waiting.
   *
   * The watch starts from "now", not at `from`: etcd serves a watch whose start revision is in
   * the past from its unsynced group, caught up only every 100 ms, so an item enqueued right after
   * would wait for it. Items put between `from` and the watch's registered revision are read
   * once, at that revision (keys only, those modified since `from`), and claimed first.
   */
  async #waitAndClaim(from: number, signal: AbortSignal | undefined): Promise<I | undefined> {
    const w = this.kv.watch(this.#prefix, { prefix: true, filters: ['nodelete'], signal });
    try {
      const registered = await w.ready;
      if (registered >= from) {
        let gap: KeyValue[];
        try {
          const r = await this.kv.range(this.#prefix, {
            prefix: true,
            revision: registered,
            serializable: true,
            minModRevision: from,
            keysOnly: true,
            limit: queueClaimBatchMax,
            ...(this.#orderByKey ? {} : { sort: { target: 'mod', order: 'ascend' } as const }),
            signal,
          });
          if (r.more) return undefined;
          gap = r.kvs;
        } catch (err) {
          // This member has not applied `registered` yet, or compacted it: re-read the present.
          if (ConclaveError.is(err, ErrorCode.FutureRevision) || ConclaveError.is(err, ErrorCode.Compacted))
            return undefined;
          throw err;
        }
        for (const kv of gap) {
          signal?.throwIfAborted();
          const item = await this.#claim(kv, undefined);
          if (item) return item;
        }
      }
      // Puts up to here were in the caller's read or the gap read (a member behind the one the
      // caller read from registers the watch earlier than `from`).
      const seen = Math.max(registered, from - 1);
      for await (const batch of w) {
        for (const ev of this.#ordered(batch.events)) {
          if (ev.kv.modRevision <= seen) continue;
          signal?.throwIfAborted();
          const item = await this.#claim(ev.kv, ev.kv.value);
          if (item) return item;
        }
      }
      if (signal?.aborted) throw abortReason(signal);
      return undefined;
    } catch (err) {
      if (signal?.aborted) throw abortReason(signal);
      if (ConclaveError.is(err, ErrorCode.Compacted)) return undefined;
      throw err;
    } finally {
      await w.close();
    }
  }

  #ordered(events: WatchEvent[]): WatchEvent[] {
    const puts = events.filter((e) => e.type === 'put');
    if (this.#orderByKey) puts.sort((a, b) => compareBytes(a.kv.key, b.kv.key));
    return puts;
  }
}

/** The wall clock in nanoseconds, strictly increasing within this process. */
let lastNanos = 0n;
function uniqueNanos(): bigint {
  const micros = BigInt(Math.floor((performance.timeOrigin + performance.now()) * 1000));
  // Random sub-microsecond digits make a collision between processes unlikely; the version guard
  // of the put catches the rest.
  let ns = micros * 1000n + BigInt(Math.floor(Math.random() * 1000));
  if (ns <= lastNanos) ns = lastNanos + 1n;
  lastNanos = ns;
  return ns;
}

/**
 * A FIFO queue, etcd Go `recipe.Queue` compatible. `enqueue(value)` adds an item; `dequeue()`
 * takes the oldest, waiting for one if the queue is empty; `tryDequeue()` never waits.
 * Holds no resources (each waiting dequeue owns its watch until it returns).
 */
export class Queue extends ClaimQueue<QueueItem> {
  constructor(kv: KV, name: string) {
    super('Queue', kv, name, false);
  }

  /**
   * Adds an item (bytes, or a string stored as UTF-8) at `name/<unix nanos>`. An aborted call may
   * still have enqueued the item if the put was already sent.
   */
  async enqueue(value: Bytes, opts: CallOptions = {}): Promise<EnqueueResult> {
    const v = toBytes(value);
    for (let attempt = 1; attempt <= queueEnqueueAttemptsMax; attempt++) {
      opts.signal?.throwIfAborted();
      const key = `${this.name}/${uniqueNanos()}`;
      // Created only if absent (Go's putNewKV): two producers never share a key.
      const t = await this.kv.txn(
        {
          compare: [{ key, target: 'version', result: '=', value: 0 }],
          success: [{ type: 'put', key, value: v }],
          failure: [],
        },
        opts,
      );
      if (t.succeeded) return { key, revision: t.revision };
    }
    throw new ConclaveError(
      ErrorCode.RetriesExhausted,
      `queue ${this.name}: ${queueEnqueueAttemptsMax} generated item keys already existed (queueEnqueueAttemptsMax); is another writer using the same key names?`,
      { retryable: true },
    );
  }

  /** @internal The dequeued item built from its claimed key. */
  protected item(kv: KeyValue, value: Uint8Array, revision: number): QueueItem {
    return makeItem(kv, value, revision);
  }
}

function makeItem(kv: KeyValue, value: Uint8Array, revision: number): QueueItem {
  return {
    key: toText(kv.key),
    value,
    createRevision: kv.createRevision,
    revision,
    text: () => toText(value),
  };
}

function checkPriority(priority: unknown): asserts priority is number {
  if (typeof priority !== 'number' || !Number.isInteger(priority) || priority < 0 || priority > priorityMax)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `PriorityQueue: priority must be an integer from 0 (first) to ${priorityMax} (last), got ${String(priority)}`,
    );
}

/**
 * A priority queue, etcd Go `recipe.PriorityQueue` compatible: lower priority numbers are dequeued
 * first, FIFO within one priority. Enqueues to the same priority are serialised through its
 * bookkeeping key (concurrent producers retry), as in Go.
 */
export class PriorityQueue extends ClaimQueue<PriorityQueueItem> {
  constructor(kv: KV, name: string) {
    super('PriorityQueue', kv, name, true);
  }

  /**
   * Adds an item with `priority` (integer 0..65535, lower first) at
   * `name/<priority %05d>/<sequence %016d>`, the sequence being one past the last key of that
   * priority. An aborted call may still have enqueued the item if the txn was already sent.
   */
  async enqueue(value: Bytes, priority: number, opts: CallOptions = {}): Promise<EnqueueResult> {
    checkPriority(priority);
    const v = toBytes(value);
    const pfx = `${this.name}/${String(priority).padStart(5, '0')}`;
    // Go's base key: every enqueue to this priority rewrites it, so a txn guarded on its mod
    // revision fails if anyone enqueued (and maybe dequeued) since our read of the last key.
    const baseKey = `__${pfx}`;
    for (let attempt = 1; ; attempt++) {
      opts.signal?.throwIfAborted();
      const last = await this.kv.range(`${pfx}/`, {
        prefix: true,
        limit: 1,
        keysOnly: true,
        sort: { target: 'key', order: 'descend' },
        signal: opts.signal,
      });
      const key = `${pfx}/${this.#nextSequence(last.kvs[0])}`;
      const t = await this.kv.txn(
        {
          // "<" rev+1: the base key may have been written at the read's revision itself.
          compare: [{ key: baseKey, target: 'mod', result: '<', value: last.revision + 1 }],
          success: [
            { type: 'put', key: baseKey, value: EMPTY },
            { type: 'put', key, value: v },
          ],
          failure: [],
        },
        opts,
      );
      if (t.succeeded) return { key, revision: t.revision };
      if (attempt >= priorityEnqueueAttemptsMax)
        throw new ConclaveError(
          ErrorCode.RetriesExhausted,
          `priority queue ${this.name}: other producers of priority ${priority} won the next sequence number ${attempt} times in a row (priorityEnqueueAttemptsMax); retry, or spread producers over priorities`,
          { retryable: true },
        );
      await sleep(Math.random() * backoffMs(attempt, priorityEnqueueBackoffMsMax, 1), opts.signal);
    }
  }

  /** One past the last key's sequence number, as 16 zero-padded digits (Go's `%016d`). */
  #nextSequence(last: KeyValue | undefined): string {
    if (!last) return '0'.padStart(16, '0');
    const text = toText(last.key);
    const field = text.slice(text.lastIndexOf('/') + 1);
    if (!/^\d+$/.test(field))
      throw new ConclaveError(
        ErrorCode.Corrupt,
        `priority queue ${this.name}: key ${text} does not end in a sequence number; delete it (it is not a queue item)`,
        { details: { key: text } },
      );
    return (BigInt(field) + 1n).toString().padStart(16, '0');
  }

  /** @internal The dequeued item built from its claimed key. */
  protected item(kv: KeyValue, value: Uint8Array, revision: number): PriorityQueueItem {
    const base = makeItem(kv, value, revision);
    const rest = base.key.slice(this.name.length + 1);
    const m = /^(\d+)\//.exec(rest);
    return { ...base, priority: m ? Number(m[1]) : Number.NaN };
  }
}
