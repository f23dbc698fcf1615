/**
 * Topic: an ordered, durable notification stream over the KV store. Publishers append events;
 * every subscriber receives every event once, in publish order, from a position it chooses or from
 * a durable cursor it acknowledged; retention removes old events by count and/or age.
 *
 * Layout under `<name>/` (see docs/recipes/topic.md):
 * - `<name>/seq` — the last allocated sequence number (decimal). Every publish is one txn that
 *   compares this key's mod revision with the one it read and, if unchanged, writes the next
 *   number here and the event under it. Sequence numbers are therefore gap-free and their order is
 *   the order in which the store committed the publishes (etcd's Go `newSequentialKV` allocates
 *   keys the same way, from the last key; a dedicated counter survives retention deleting every
 *   event).
 * - `<name>/events/<seq, 16 digits>` — one key per event, value `<publishedAtMs>\n<payload>`.
 *   Events are live keys, not history: `kv.compact()` never removes them (etcd compaction only
 *   drops superseded revisions), so subscribers can always re-read them by key.
 * - `<name>/trimmed` — the retention floor, JSON `{ seq, revision }` of the newest removed event.
 *   Written only by trimming, in the txn that deletes the events, guarded by its own mod revision
 *   so that it only ever moves forward.
 * - `<name>/cursors/<subscriber>` — a durable subscriber's last acknowledged seq (16 digits, so
 *   byte order is numeric order and an ack can move it forward only, with one VALUE compare).
 *
 * Subscribing reads pages of events by key from the subscriber's position, all of each page at one
 * revision, then watches the events range from the revision after the last read. When the watch
 * breaks (compacted, overflowed, reconnected), the subscription simply re-reads from its position:
 * nothing is lost, because the events are keys.
 */
import { ConclaveError, ErrorCode, throwIfAborted } from '../src/errors.js';
import { concatBytes, toBytes, toText } from '../src/keys.js';
import type { KV } from '../src/kv.js';
import type { Bytes, CallOptions, KeyValue, Op, OpResponse, RangeResult } from '../src/types.js';
import { checkInt, checkName } from './internal/check.js';
import { renamedOption } from './internal/options.js';
import { sleep } from './internal/timing.js';
import {
  topicBackoffJitterMs,
  topicPageEventsMax,
  topicPublishAttemptsMax,
  topicSeqDigits,
  topicSubscriberNameMax,
  topicTrimBatchMax,
  topicTrimRoundsMax,
  topicWatchBatchesMax,
} from './internal/topic-bounds.js';
import { Subscription } from './topic-subscription.js';
import {
  isTopicTrimmed,
  type Published,
  type SubscribeOptions,
  type TopicEvent,
  type TopicOptions,
  type TopicPosition,
  type TopicRetention,
  type TopicTrimmedDetails,
} from './topic-types.js';

// ---------------------------------------------------------------------------------------------
// Encoding

const newline = 0x0a;
/** Longest decimal timestamp header we accept before the newline. */
const stampCharsMax = 20;

const pad = (seq: number): string => String(seq).padStart(topicSeqDigits, '0');

function encodeEvent(publishedAtMs: number, payload: Uint8Array): Uint8Array {
  return concatBytes(toBytes(`${Math.round(publishedAtMs)}\n`), payload);
}

function corrupt(topic: string, what: string): ConclaveError {
  return new ConclaveError(
    ErrorCode.Corrupt,
    `topic ${topic}: ${what}; only Topic should write under the topic's events prefix`,
    { details: { topic } },
  );
}

function parseSeq(topic: string, text: string, what: string): number {
  const n = /^\d{1,16}$/.test(text) ? Number(text) : Number.NaN;
  if (!Number.isSafeInteger(n))
    throw corrupt(topic, `${what} is not a sequence number: ${JSON.stringify(text)}`);
  return n;
}

interface Floor {
  /** Events with seq <= this were removed by retention (0: none). */
  readonly seq: number;
  /** The publish revision of the event `seq` (0: none). */
  readonly revision: number;
  /** Mod revision of the floor key (0: absent), for the trimmers' compare-and-swap. */
  readonly mod: number;
}

function parseFloor(topic: string, kv: KeyValue | undefined): Floor {
  if (!kv) return { seq: 0, revision: 0, mod: 0 };
  try {
    const v = JSON.parse(toText(kv.value)) as { seq?: unknown; revision?: unknown };
    if (Number.isSafeInteger(v.seq) && Number.isSafeInteger(v.revision))
      return { seq: v.seq as number, revision: v.revision as number, mod: kv.modRevision };
  } catch {
    // Reported below.
  }
  throw corrupt(topic, `the retention floor ${toText(kv.key)} does not decode`);
}

function firstKv(r: OpResponse | undefined): KeyValue | undefined {
  return r?.type === 'get' ? r.kvs[0] : undefined;
}

function getResult(r: OpResponse | undefined): RangeResult {
  if (r?.type !== 'get') throw new ConclaveError(ErrorCode.Internal, 'txn: expected a get response');
  return r;
}

const checkPositive = (what: string, n: unknown, max: number): number => checkInt(what, n, 1, max);

/** A topic's retention, checked, under its current names. */
interface Retention {
  readonly eventsMax?: number;
  readonly ageMsMax?: number;
}

function retentionOf(r: TopicRetention | undefined): Retention {
  const eventsMax = renamedOption(
    'Topic: retention',
    { name: 'eventsMax', value: r?.eventsMax },
    { name: 'maxEvents', value: r?.maxEvents },
  );
  const ageMsMax = renamedOption(
    'Topic: retention',
    { name: 'ageMsMax', value: r?.ageMsMax },
    { name: 'maxAgeMs', value: r?.maxAgeMs },
  );
  if (eventsMax !== undefined)
    checkPositive('Topic: retention.eventsMax', eventsMax, Number.MAX_SAFE_INTEGER);
  if (ageMsMax !== undefined && !(Number.isFinite(ageMsMax) && ageMsMax > 0))
    throw new ConclaveError(ErrorCode.InvalidArgument, 'Topic: retention.ageMsMax must be a positive number');
  return { ...(eventsMax !== undefined && { eventsMax }), ...(ageMsMax !== undefined && { ageMsMax }) };
}

// ---------------------------------------------------------------------------------------------
// Topic

/**
 * A named topic. `publish()` appends; `subscribe()` reads in order; retention (an option) trims.
 * A Topic holds no lease, watch or timer: it needs no closing (subscriptions do).
 */
export class Topic {
  readonly kv: KV;
  readonly name: string;
  readonly #retention: Retention | undefined;
  readonly #now: () => number;
  readonly #eventsPrefix: string;
  readonly #counterKey: string;
  readonly #floorKey: string;
  /** The counter as last seen: the next publish's first guess (one round trip when uncontended). */
  #last = { seq: 0, mod: 0 };

  constructor(kv: KV, name: string, opts: TopicOptions = {}) {
    checkName('Topic: name', name);
    const r = retentionOf(opts.retention);
    if (opts.now !== undefined && typeof opts.now !== 'function')
      throw new ConclaveError(ErrorCode.InvalidArgument, 'Topic: now must be a function');
    this.kv = kv;
    this.name = name;
    this.#retention = r.eventsMax !== undefined || r.ageMsMax !== undefined ? r : undefined;
    this.#now = opts.now ?? Date.now;
    this.#eventsPrefix = `${name}/events/`;
    this.#counterKey = `${name}/seq`;
    this.#floorKey = `${name}/trimmed`;
  }

  /** The key of event `seq`. */
  eventKey(seq: number): string {
    return `${this.#eventsPrefix}${pad(seq)}`;
  }

  /** End of the events range: ':' sorts right after '9', so only 16-digit keys fall inside. */
  get #eventsEnd(): string {
    return `${this.#eventsPrefix}:`;
  }

  /** The key holding a durable subscriber's cursor (`<name>/cursors/<subscriber>`). */
  cursorKey(subscriber: string): string {
    return `${this.name}/cursors/${subscriber}`;
  }

  /**
   * Appends one event; resolves with its seq and the revision it was committed at. Concurrent
   * publishers race for the next seq with a compare-and-swap; the loser re-reads (in the same
   * round trip) and retries, up to `limits.topic.publishAttemptsMax` times (then `retries-exhausted`).
   * An `indeterminate` failure is not retried: the event may or may not have been published.
   * With retention, the publish then trims (bounded: at most one trim txn of `limits.topic.trimBatchMax`).
   */
  async publish(value: Bytes, opts: CallOptions = {}): Promise<Published> {
    const { signal } = opts;
    throwIfAborted(signal);
    const payload = toBytes(value);
    const oldest: Op[] = this.#retention
      ? [{ type: 'get', key: this.#eventsPrefix, options: { end: this.#eventsEnd, limit: 1 } }]
      : [];
    for (let attempt = 1; attempt <= topicPublishAttemptsMax; attempt++) {
      const last = this.#last;
      const seq = last.seq + 1;
      const t = await this.kv.txn(
        {
          compare: [{ key: this.#counterKey, target: 'mod', result: '=', value: last.mod }],
          success: [
            { type: 'put', key: this.#counterKey, value: String(seq) },
            { type: 'put', key: this.eventKey(seq), value: encodeEvent(this.#now(), payload) },
            ...oldest,
          ],
          failure: [{ type: 'get', key: this.#counterKey }],
        },
        { signal },
      );
      if (t.succeeded) {
        // Another publish through this Topic may have advanced the cache meanwhile.
        if (t.revision > this.#last.mod) this.#last = { seq, mod: t.revision };
        if (this.#retention) await this.#trimAfterPublish(firstKv(t.responses[2]), seq, signal);
        return { seq, revision: t.revision };
      }
      const kv = firstKv(t.responses[0]);
      this.#last = kv
        ? { seq: parseSeq(this.name, toText(kv.value), 'the counter'), mod: kv.modRevision }
        : { seq: 0, mod: 0 };
      if (attempt >= 2) await sleep(topicBackoffJitterMs(attempt - 1), signal);
    }
    throw new ConclaveError(
      ErrorCode.RetriesExhausted,
      `topic ${this.name}: publish lost the race for the next sequence number ${topicPublishAttemptsMax} times; too many concurrent publishers — retry later or publish less often`,
      { details: { topic: this.name } },
    );
  }

  /** Whether the oldest event (as read in the publish txn) is past a retention bound. */
  #needsTrim(oldest: KeyValue | undefined, lastSeq: number): boolean {
    if (!oldest) return false;
    const r = this.#retention!;
    const ev = this.#decode(oldest);
    if (r.eventsMax !== undefined && ev.seq <= lastSeq - r.eventsMax) return true;
    return r.ageMsMax !== undefined && ev.publishedAtMs < this.#now() - r.ageMsMax;
  }

  /**
   * Trims when the oldest event (read in the publish txn) is past a bound. A failed or aborted trim
   * does not fail the publish, which is applied: the next publish (or `trim()`) tries again.
   */
  async #trimAfterPublish(oldest: KeyValue | undefined, lastSeq: number, signal: AbortSignal | undefined) {
    try {
      if (this.#needsTrim(oldest, lastSeq)) await this.#trimOnce(signal);
    } catch (err) {
      if (!ConclaveError.is(err)) throw err;
    }
  }

  /**
   * Applies retention now: removes events past the count or age bound, oldest first, in txns of
   * at most `limits.topic.trimBatchMax` events (up to `limits.topic.trimRoundsMax` txns). Resolves with how many
   * events this call removed. Needed for age retention on a topic nobody publishes to.
   */
  async trim(opts: CallOptions = {}): Promise<number> {
    if (!this.#retention) return 0;
    let total = 0;
    for (let round = 0; round < topicTrimRoundsMax; round++) {
      throwIfAborted(opts.signal);
      const r = await this.#trimOnce(opts.signal);
      total += r.trimmed;
      if (!r.more) break;
    }
    return total;
  }

  /**
   * One trim: reads the floor, the counter and the oldest events at one revision, then deletes the
   * leading run of events past a bound and raises the floor, in one txn guarded by the floor's mod
   * revision (a concurrent trimmer makes it fail; it has done the work). Age retention stops at the
   * first young event, so events stay a contiguous range above the floor.
   */
  async #trimOnce(signal: AbortSignal | undefined): Promise<{ trimmed: number; more: boolean }> {
    const r = this.#retention!;
    const read = await this.kv.txn(
      {
        compare: [],
        success: [
          { type: 'get', key: this.#floorKey },
          { type: 'get', key: this.#counterKey },
          {
            type: 'get',
            key: this.#eventsPrefix,
            options: { end: this.#eventsEnd, limit: topicTrimBatchMax, keysOnly: r.ageMsMax === undefined },
          },
        ],
        failure: [],
      },
      { signal },
    );
    const floor = parseFloor(this.name, firstKv(read.responses[0]));
    const counter = firstKv(read.responses[1]);
    const lastSeq = counter ? parseSeq(this.name, toText(counter.value), 'the counter') : 0;
    const page = getResult(read.responses[2]);
    const cutoffMs = r.ageMsMax === undefined ? undefined : this.#now() - r.ageMsMax;
    let upTo: { seq: number; revision: number } | undefined;
    let n = 0;
    for (const kv of page.kvs) {
      const seq = this.#seqOf(kv.key);
      const byCount = r.eventsMax !== undefined && seq <= lastSeq - r.eventsMax;
      const byAge = cutoffMs !== undefined && this.#decode(kv).publishedAtMs < cutoffMs;
      if (!byCount && !byAge) break;
      upTo = { seq, revision: kv.modRevision };
      n++;
    }
    if (!upTo) return { trimmed: 0, more: false };
    const t = await this.kv.txn(
      {
        compare: [{ key: this.#floorKey, target: 'mod', result: '=', value: floor.mod }],
        success: [
          { type: 'delete', key: this.#eventsPrefix, options: { end: this.eventKey(upTo.seq + 1) } },
          { type: 'put', key: this.#floorKey, value: JSON.stringify(upTo) },
        ],
        failure: [],
      },
      { signal },
    );
    return { trimmed: t.succeeded ? n : 0, more: t.succeeded && n === page.kvs.length && page.more };
  }

  /** The retained range now: `oldestSeq..lastSeq` (empty when `oldestSeq > lastSeq`). */
  async info(opts: CallOptions = {}): Promise<{ oldestSeq: number; lastSeq: number; revision: number }> {
    const read = await this.#readState(undefined, opts.signal);
    return { oldestSeq: read.floor.seq + 1, lastSeq: read.lastSeq, revision: read.revision };
  }

  /** The durable subscriber's last acknowledged seq (0: none yet), or undefined when it has no cursor. */
  async cursor(subscriber: string, opts: CallOptions = {}): Promise<number | undefined> {
    checkSubscriber(subscriber);
    const kv = await this.kv.get(this.cursorKey(subscriber), { signal: opts.signal });
    return kv ? parseSeq(this.name, toText(kv.value), `cursor ${subscriber}`) : undefined;
  }

  /**
   * Sets the subscriber's cursor to `lastSeq` (its next subscription starts at `lastSeq + 1`),
   * forward or backward: to skip events lost to retention, or to replay.
   */
  async setCursor(subscriber: string, lastSeq: number, opts: CallOptions = {}): Promise<void> {
    checkSubscriber(subscriber);
    if (!Number.isSafeInteger(lastSeq) || lastSeq < 0)
      throw new ConclaveError(ErrorCode.InvalidArgument, 'setCursor: lastSeq must be an integer >= 0');
    await this.kv.put(this.cursorKey(subscriber), pad(lastSeq), { signal: opts.signal });
  }

  /** Forgets a durable subscriber: its next subscription starts at `from` again. */
  async deleteCursor(subscriber: string, opts: CallOptions = {}): Promise<boolean> {
    checkSubscriber(subscriber);
    const r = await this.kv.delete(this.cursorKey(subscriber), { signal: opts.signal });
    return r.deleted > 0;
  }

  /**
   * Opens a subscription (iterate it; close it, or `await using`). The start position is fixed
   * before this resolves: the durable subscriber's cursor + 1, else `from` (default `'next'`).
   * Rejects with an `isTopicTrimmed` error (code `compacted`, `details.oldestSeq`) when that
   * position was already removed by retention; with `invalid-argument` for a seq beyond the next
   * one. `signal` cancels this call (it rejects with the signal's reason) and later stops the
   * subscription: its iteration then ends normally, as after `close()`.
   */
  async subscribe(opts: SubscribeOptions = {}): Promise<Subscription> {
    const { subscriber, signal } = opts;
    if (subscriber !== undefined) checkSubscriber(subscriber);
    else if (opts.autoAck)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'subscribe: autoAck needs a durable subscriber name',
      );
    checkPosition(opts.from);
    if (opts.pageEventsMax !== undefined)
      checkPositive('subscribe: pageEventsMax', opts.pageEventsMax, topicPageEventsMax);
    if (opts.watchBatchesMax !== undefined)
      checkPositive('subscribe: watchBatchesMax', opts.watchBatchesMax, topicWatchBatchesMax);
    throwIfAborted(signal);
    let start: number;
    let state = await this.#readState(subscriber, signal);
    // Bounded: only a `{ revision }` search reads at a pinned revision, and a store compaction
    // racing it is rare; after `searchAttemptsMax` tries the store's `compacted` error surfaces.
    for (let attempt = 1; ; attempt++) {
      try {
        start =
          state.cursor !== undefined
            ? state.cursor + 1
            : await this.#resolve(opts.from ?? 'next', state, signal);
        break;
      } catch (err) {
        if (
          isTopicTrimmed(err) ||
          !ConclaveError.is(err, ErrorCode.Compacted) ||
          attempt >= searchAttemptsMax
        )
          throw err;
        state = await this.#readState(subscriber, signal);
      }
    }
    if (start <= state.floor.seq)
      throw this.trimmedError({ requestedSeq: start, subscriber }, state.floor.seq + 1);
    if (subscriber !== undefined && state.cursor === undefined) {
      // Store the cursor now, so a subscriber that stops before its first ack resumes here.
      const key = this.cursorKey(subscriber);
      const t = await this.kv.txn(
        {
          compare: [{ key, target: 'create', result: '=', value: 0 }],
          success: [{ type: 'put', key, value: pad(start - 1) }],
          failure: [{ type: 'get', key }],
        },
        { signal },
      );
      const other = firstKv(t.responses[0]);
      if (!t.succeeded && other) start = parseSeq(this.name, toText(other.value), `cursor ${subscriber}`) + 1;
      if (t.succeeded && signal?.aborted) {
        // This call is failing: take back the cursor it created (unless it was moved since), so a
        // later subscribe under the name starts at its own `from`, as if this one never ran.
        await this.kv
          .txn({
            compare: [{ key, target: 'mod', result: '=', value: t.revision }],
            success: [{ type: 'delete', key }],
            failure: [],
          })
          .catch(() => undefined);
      }
    }
    throwIfAborted(signal);
    return new Subscription(this, {
      start,
      subscriber,
      autoAck: opts.autoAck ?? false,
      pageEventsMax: opts.pageEventsMax ?? topicPageEventsMax,
      watchBatchesMax: opts.watchBatchesMax ?? topicWatchBatchesMax,
      signal,
    });
  }

  /** Counter, floor and (optionally) a cursor, read at one revision. */
  async #readState(
    subscriber: string | undefined,
    signal: AbortSignal | undefined,
  ): Promise<{ lastSeq: number; floor: Floor; cursor: number | undefined; revision: number }> {
    const t = await this.kv.txn(
      {
        compare: [],
        success: [
          { type: 'get', key: this.#counterKey },
          { type: 'get', key: this.#floorKey },
          ...(subscriber === undefined ? [] : [{ type: 'get', key: this.cursorKey(subscriber) } as const]),
        ],
        failure: [],
      },
      { signal },
    );
    const counter = firstKv(t.responses[0]);
    const cursor = firstKv(t.responses[2]);
    return {
      lastSeq: counter ? parseSeq(this.name, toText(counter.value), 'the counter') : 0,
      floor: parseFloor(this.name, firstKv(t.responses[1])),
      cursor: cursor ? parseSeq(this.name, toText(cursor.value), `cursor ${subscriber}`) : undefined,
      revision: t.revision,
    };
  }

  async #resolve(
    from: TopicPosition,
    state: { lastSeq: number; floor: Floor; revision: number },
    signal: AbortSignal | undefined,
  ): Promise<number> {
    if (from === 'next') return state.lastSeq + 1;
    if (from === 'oldest') return state.floor.seq + 1;
    if (typeof from === 'number') {
      if (from > state.lastSeq + 1)
        throw new ConclaveError(
          ErrorCode.InvalidArgument,
          `topic ${this.name}: from ${from} is beyond the next sequence number (${state.lastSeq + 1}); subscribe from a published seq, 'oldest' or 'next'`,
          { details: { argument: 'from', topic: this.name, nextSeq: state.lastSeq + 1 } },
        );
      return from;
    }
    const revision = from.revision;
    if (revision <= state.floor.revision)
      throw this.trimmedError({ requestedRevision: revision }, state.floor.seq + 1);
    if (revision > state.revision + 1)
      throw new ConclaveError(
        ErrorCode.FutureRevision,
        `topic ${this.name}: from revision ${revision} is newer than the store's (${state.revision})`,
        { details: { topic: this.name, revision: state.revision } },
      );
    return this.#searchRevision(revision, state, signal);
  }

  /**
   * The first seq published at or after `revision`: a binary search over the retained events,
   * each probe a get pinned at the state's revision (events are immutable; their revisions grow
   * with their seqs). O(log n) round trips, without loading the range.
   */
  async #searchRevision(
    revision: number,
    state: { lastSeq: number; floor: Floor; revision: number },
    signal: AbortSignal | undefined,
  ): Promise<number> {
    let lo = state.floor.seq + 1;
    let hi = state.lastSeq + 1;
    // Invariant: every seq < lo was published before `revision`; seq `hi` is at or after it (or next).
    while (lo < hi) {
      const mid = Math.floor((lo + hi) / 2);
      const kv = await this.kv.get(this.eventKey(mid), { revision: state.revision, signal });
      if (!kv) throw corrupt(this.name, `event ${mid} is missing above the retention floor`);
      if (kv.modRevision >= revision) hi = mid;
      else lo = mid + 1;
    }
    return lo;
  }

  /** @internal The error for a position removed by retention. */
  trimmedError(
    requested: { requestedSeq?: number; requestedRevision?: number; subscriber?: string | undefined },
    oldestSeq: number,
  ): ConclaveError {
    const who = requested.subscriber === undefined ? 'the subscriber' : `subscriber ${requested.subscriber}`;
    const what =
      requested.requestedSeq !== undefined
        ? `events ${requested.requestedSeq}..${oldestSeq - 1} were removed by retention before ${who} read them`
        : `events published at or after revision ${requested.requestedRevision} were removed by retention`;
    const fix =
      requested.subscriber === undefined
        ? `subscribe({ from: ${oldestSeq} })`
        : `topic.setCursor(${JSON.stringify(requested.subscriber)}, ${oldestSeq - 1})`;
    const details: TopicTrimmedDetails = {
      topic: this.name,
      oldestSeq,
      ...(requested.requestedSeq === undefined ? {} : { requestedSeq: requested.requestedSeq }),
      ...(requested.requestedRevision === undefined
        ? {}
        : { requestedRevision: requested.requestedRevision }),
      ...(requested.subscriber === undefined ? {} : { subscriber: requested.subscriber }),
    };
    return new ConclaveError(
      ErrorCode.Compacted,
      `topic ${this.name}: ${what}; the oldest retained event is seq ${oldestSeq}. Resume from it with ${fix} (accepting the loss), or retain more events`,
      { retryable: false, details: { ...details } },
    );
  }

  /** Parses an event key and value. */
  #decode(kv: KeyValue): TopicEvent {
    const seq = this.#seqOf(kv.key);
    const nl = kv.value.subarray(0, stampCharsMax + 1).indexOf(newline);
    const stamp = nl > 0 ? Number(toText(kv.value.subarray(0, nl))) : Number.NaN;
    if (!Number.isSafeInteger(stamp)) throw corrupt(this.name, `event ${seq} has no timestamp header`);
    return {
      topic: this.name,
      seq,
      revision: kv.modRevision,
      publishedAtMs: stamp,
      value: kv.value.subarray(nl + 1),
    };
  }

  #seqOf(key: Uint8Array): number {
    const text = toText(key);
    if (!text.startsWith(this.#eventsPrefix) || text.length !== this.#eventsPrefix.length + topicSeqDigits)
      throw corrupt(this.name, `unexpected key ${JSON.stringify(text)} among the events`);
    return parseSeq(this.name, text.slice(this.#eventsPrefix.length), 'an event key');
  }

  // Subscription plumbing (module-internal; not part of the documented API).

  /** @internal One page of events from `next`, checked against the floor, at one revision. */
  async readPage(
    next: number,
    limit: number,
    subscriber: string | undefined,
    signal: AbortSignal,
  ): Promise<{ events: TopicEvent[]; more: boolean; revision: number }> {
    const t = await this.kv.txn(
      {
        compare: [],
        success: [
          { type: 'get', key: this.eventKey(next), options: { end: this.#eventsEnd, limit } },
          { type: 'get', key: this.#floorKey },
          { type: 'get', key: this.#counterKey },
        ],
        failure: [],
      },
      { signal },
    );
    const page = getResult(t.responses[0]);
    const floor = parseFloor(this.name, firstKv(t.responses[1]));
    const counter = firstKv(t.responses[2]);
    const lastSeq = counter ? parseSeq(this.name, toText(counter.value), 'the counter') : 0;
    if (next <= floor.seq) throw this.trimmedError({ requestedSeq: next, subscriber }, floor.seq + 1);
    const events = page.kvs.map((kv) => this.#decode(kv));
    // Seqs are gap-free below the counter: a missing `next` means someone deleted it out of band.
    if (next <= lastSeq && events[0]?.seq !== next)
      throw this.trimmedError({ requestedSeq: next, subscriber }, events[0]?.seq ?? lastSeq + 1);
    return { events, more: page.more, revision: t.revision };
  }

  /** @internal Watches the events range from `startRevision` (puts only). */
  watchEvents(startRevision: number, bufferBatchesMax: number, signal: AbortSignal) {
    return this.kv.watch(this.#eventsPrefix, {
      end: this.#eventsEnd,
      startRevision,
      filters: ['nodelete'],
      bufferBatchesMax,
      signal,
    });
  }

  /** @internal */
  decodeEvent(kv: KeyValue): TopicEvent {
    return this.#decode(kv);
  }

  /** @internal Moves the cursor forward to `seq` (never back), in one txn. */
  async ackCursor(subscriber: string, seq: number, signal: AbortSignal | undefined): Promise<void> {
    const key = this.cursorKey(subscriber);
    const value = pad(seq);
    await this.kv.txn(
      {
        compare: [{ key, target: 'create', result: '=', value: 0 }],
        success: [{ type: 'put', key, value }],
        // Byte order of 16-digit values is numeric order: only a smaller stored seq is replaced.
        failure: [
          {
            type: 'txn',
            txn: {
              compare: [{ key, target: 'value', result: '<', value }],
              success: [{ type: 'put', key, value }],
              failure: [],
            },
          },
        ],
      },
      { signal },
    );
  }
}

/** Tries of a `{ revision }` start search whose pinned revision was compacted under it. */
const searchAttemptsMax = 3;

function checkSubscriber(subscriber: unknown): asserts subscriber is string {
  if (typeof subscriber !== 'string' || subscriber.length === 0 || subscriber.length > topicSubscriberNameMax)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      `subscriber must be a non-empty string of at most ${topicSubscriberNameMax} characters`,
    );
}

function checkPosition(from: unknown): void {
  if (from === undefined || from === 'oldest' || from === 'next') return;
  if (typeof from === 'number') {
    if (!Number.isSafeInteger(from) || from < 1)
      throw new ConclaveError(ErrorCode.InvalidArgument, 'subscribe: from must be a seq >= 1');
    return;
  }
  const rev = (from as { revision?: unknown } | null)?.revision;
  if (typeof from !== 'object' || !Number.isSafeInteger(rev) || (rev as number) < 1)
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      "subscribe: from must be a seq, 'oldest', 'next' or { revision }",
    );
}
