/**
 * A topic subscription: reads pages of events by key from its position, then watches the events
 * range from the revision after the last read, and re-reads from its position whenever the watch
 * breaks (events are keys, so nothing is lost). Opened by `Topic.subscribe` (topic.ts).
 */
import { ConclaveError, ErrorCode } from '../src/errors.js';
import type { CallOptions, KeyValue, Watch } from '../src/types.js';
import { sleep } from './internal/timing.js';
import { topicBackoffJitterMs, topicResubscribeAttemptsMax } from './internal/topic-bounds.js';
import { isTopicTrimmed, type TopicEvent } from './topic-types.js';

/** What a subscription needs from its topic (a `Topic` is one). */
export interface SubscribedTopic {
  readonly name: string;
  /** One page of events from `next`, checked against the retention floor, at one revision. */
  readPage(
    next: number,
    limit: number,
    subscriber: string | undefined,
    signal: AbortSignal,
  ): Promise<{ events: TopicEvent[]; more: boolean; revision: number }>;
  /** Watches the events range from `startRevision` (puts only). */
  watchEvents(startRevision: number, bufferBatchesMax: number, signal: AbortSignal): Watch;
  /** The event a key of the events range holds: its seq from the key, its publish time and payload from the value. */
  decodeEvent(kv: KeyValue): TopicEvent;
  /** Moves the durable cursor forward to `seq` (never back). */
  ackCursor(subscriber: string, seq: number, signal: AbortSignal | undefined): Promise<void>;
}

/** @internal What `Topic.subscribe` resolved: where and how a subscription starts. */
export interface SubscriptionInit {
  readonly start: number;
  readonly subscriber: string | undefined;
  readonly autoAck: boolean;
  readonly pageEventsMax: number;
  readonly watchBatchesMax: number;
  readonly signal: AbortSignal | undefined;
}

/** Watch failures after which the subscription re-reads from its position right away. */
const resyncCodes: ReadonlySet<string> = new Set([ErrorCode.Compacted, ErrorCode.WatchOverflow]);

/** A watch delivered a seq past the expected one: re-read from the position. */
class Gap extends Error {}

/**
 * An open subscription: an async iterable of events, in seq order, each once (per subscription).
 * One consumer may iterate it. `close()` and aborting the subscribe `signal` both end the
 * iteration normally (a requested stop is not an error); a position lost to retention ends it with an
 * `isTopicTrimmed` error. Memory is bounded by one page or `watchBatchesMax` watch batches: a
 * consumer slower than the publishers makes the watch overflow, and the subscription then reads
 * pages from its position again (backpressure by re-reading; nothing is dropped).
 */
export class Subscription implements AsyncIterable<TopicEvent>, AsyncDisposable {
  readonly topic: SubscribedTopic;
  readonly subscriber: string | undefined;
  /** The first seq this subscription delivers. */
  readonly startSeq: number;
  readonly #init: SubscriptionInit;
  readonly #stop = new AbortController();
  #next: number;
  #delivered: number;
  /** The last event whose successor the consumer asked for (autoAck acknowledges up to it). */
  #processed: number;
  #acked: number;
  #iterated = false;
  #closed: Promise<void> | undefined;
  #onAbort = () => void this.close();

  /** @internal Use `topic.subscribe()`. */
  constructor(topic: SubscribedTopic, init: SubscriptionInit) {
    this.topic = topic;
    this.subscriber = init.subscriber;
    this.startSeq = init.start;
    this.#init = init;
    this.#next = init.start;
    this.#delivered = init.start - 1;
    this.#processed = init.start - 1;
    this.#acked = init.start - 1;
    init.signal?.addEventListener('abort', this.#onAbort, { once: true });
  }

  /** The next seq to deliver. */
  get position(): number {
    return this.#next;
  }

  /** The last seq delivered (`startSeq - 1` before the first). */
  get lastDeliveredSeq(): number {
    return this.#delivered;
  }

  /** The highest seq this subscription acknowledged (durable subscribers). */
  get ackedSeq(): number {
    return this.#acked;
  }

  /**
   * Acknowledges every event up to `seq` (default: the last delivered): the durable cursor moves
   * there, never backward, so the subscriber's next subscription starts after it.
   */
  async ack(seq: number = this.#delivered, opts: CallOptions = {}): Promise<void> {
    const subscriber = this.subscriber;
    if (subscriber === undefined)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'ack: only a durable subscription (subscriber name) has a cursor',
      );
    if (!Number.isSafeInteger(seq) || seq > this.#delivered)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `ack: seq must be an integer no greater than the last delivered (${this.#delivered})`,
      );
    if (seq <= this.#acked) return;
    await this.topic.ackCursor(subscriber, seq, opts.signal);
    this.#acked = Math.max(this.#acked, seq);
  }

  /**
   * Ends the subscription: a pending `next()` resolves done; with autoAck, events the consumer
   * finished are acknowledged first. Idempotent.
   */
  close(): Promise<void> {
    this.#closed ??= (async () => {
      this.#init.signal?.removeEventListener('abort', this.#onAbort);
      this.#stop.abort(
        new ConclaveError(ErrorCode.Closed, `subscription to topic ${this.topic.name} closed`),
      );
      await this.#flushAck(true);
    })();
    return this.#closed;
  }

  /** `close()`, for `await using`. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }

  /** The events, in seq order; iterate once (one consumer per subscription). */
  [Symbol.asyncIterator](): AsyncGenerator<TopicEvent, void, undefined> {
    if (this.#iterated)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'Subscription: iterate it once (one consumer per subscription)',
      );
    this.#iterated = true;
    return this.#run();
  }

  /** autoAck: acknowledges what the consumer finished; a lost ack only means a redelivery. */
  async #flushAck(closing: boolean): Promise<void> {
    if (!this.#init.autoAck || this.#processed <= this.#acked) return;
    try {
      await this.ack(this.#processed, closing ? {} : { signal: this.#stop.signal });
    } catch (err) {
      if (closing || this.#stop.signal.aborted) return;
      if (!ConclaveError.is(err) || !err.retryable) throw err;
    }
  }

  async *#run(): AsyncGenerator<TopicEvent, void, undefined> {
    const signal = this.#stop.signal;
    let failures = 0;
    try {
      // Bounded: every turn either delivers, or counts a failure (resync causes make progress
      // only by re-reading, which either delivers or catches up and watches again).
      while (!signal.aborted) {
        let revision: number;
        try {
          revision = yield* this.#readPages(signal);
        } catch (err) {
          if (signal.aborted) break;
          if (!ConclaveError.is(err) || !err.retryable || isTopicTrimmed(err)) throw err;
          failures = await this.#failed(failures, err, signal);
          continue;
        }
        failures = 0;
        const w = this.topic.watchEvents(revision + 1, this.#init.watchBatchesMax, signal);
        try {
          for await (const batch of w) {
            for (const e of batch.events) {
              const ev = this.topic.decodeEvent(e.kv);
              if (ev.seq < this.#next) continue;
              if (ev.seq > this.#next) throw new Gap();
              yield* this.#deliver(ev);
            }
            failures = 0;
            await this.#flushAck(false);
          }
          if (signal.aborted) break;
          // The watch ended without being closed by us: a broken stream; re-read and re-watch.
          failures = await this.#failed(failures, undefined, signal);
        } catch (err) {
          if (signal.aborted) break;
          if (err instanceof Gap || (ConclaveError.is(err) && resyncCodes.has(err.code))) continue;
          if (!ConclaveError.is(err) || !err.retryable) throw err;
          failures = await this.#failed(failures, err, signal);
        } finally {
          await w.close();
        }
      }
    } catch (err) {
      if (!signal.aborted) throw err;
    } finally {
      await this.close();
    }
    // Stopped by close() or the subscribe signal: a requested stop ends the iteration normally.
  }

  /** Reads and delivers pages until caught up; returns the revision of the last read. */
  async *#readPages(signal: AbortSignal): AsyncGenerator<TopicEvent, number, undefined> {
    // Bounded: each full page advances the position by its length; a short page ends the loop.
    for (;;) {
      const page = await this.topic.readPage(this.#next, this.#init.pageEventsMax, this.subscriber, signal);
      for (const ev of page.events) {
        if (ev.seq !== this.#next)
          throw new ConclaveError(ErrorCode.Internal, `topic read skipped to ${ev.seq}`);
        yield* this.#deliver(ev);
      }
      await this.#flushAck(false);
      if (!page.more) return page.revision;
    }
  }

  async *#deliver(ev: TopicEvent): AsyncGenerator<TopicEvent, void, undefined> {
    // Closed while the consumer held the previous event: deliver nothing more from the page.
    this.#stop.signal.throwIfAborted();
    this.#next = ev.seq + 1;
    this.#delivered = ev.seq;
    yield ev;
    // The consumer asked for the next event: it is done with this one.
    this.#processed = ev.seq;
  }

  /** Counts a failed attempt and backs off; fails `unavailable` past the bound. */
  async #failed(failures: number, cause: unknown, signal: AbortSignal): Promise<number> {
    const n = failures + 1;
    if (n > topicResubscribeAttemptsMax)
      throw new ConclaveError(
        ErrorCode.Unavailable,
        `topic ${this.topic.name}: could not re-read and re-watch in ${topicResubscribeAttemptsMax} attempts; subscribe again later from position ${this.#next}`,
        { cause, details: { topic: this.topic.name, position: this.#next } },
      );
    await sleep(topicBackoffJitterMs(n), signal);
    return n;
  }
}
