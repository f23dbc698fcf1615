/** The topic recipe's public types, shared by `Topic` and `Subscription` (its bounds: internal/topic-bounds.ts). */
import { ConclaveError, ErrorCode } from '../src/errors.js';
import type { CallOptions } from '../src/types.js';

/** How long a topic keeps its events. Both bounds may be combined; an event goes when either says so. */
export interface TopicRetention {
  /** Keep at most this many of the newest events. */
  readonly eventsMax?: number;
  /** Remove events published longer ago than this many ms (by the publishers' and trimmers' clocks). */
  readonly ageMsMax?: number;
  /** @deprecated Renamed `eventsMax` (every bound is named `<what>Max`); this name goes in the next release. */
  readonly maxEvents?: number;
  /** @deprecated Renamed `ageMsMax`; this name goes in the next release. */
  readonly maxAgeMs?: number;
}

/** Options of a `Topic`. */
export interface TopicOptions {
  /** Default: keep every event. Applied by this Topic's `publish()` and `trim()`. */
  readonly retention?: TopicRetention;
  /** Wall clock in ms, stamped on events and used for age retention (default `Date.now`). */
  readonly now?: () => number;
}

/** One delivered event. */
export interface TopicEvent {
  readonly topic: string;
  /** Position in the topic: 1, 2, 3… without gaps, in publish order. */
  readonly seq: number;
  /** The store revision at which the event was published. */
  readonly revision: number;
  /** The publisher's clock when it published. */
  readonly publishedAtMs: number;
  readonly value: Uint8Array;
}

/** Where `publish()` appended the event. */
export interface Published {
  /** The event's position in the topic. */
  readonly seq: number;
  /** The store revision at which it was published. */
  readonly revision: number;
}

/**
 * Where a subscription starts: a seq (inclusive), `'oldest'` (the oldest retained event),
 * `'next'` (only events published after the subscribe call), or `{ revision }` (the first event
 * published at or after that store revision).
 */
export type TopicPosition = number | 'oldest' | 'next' | { readonly revision: number };

export interface SubscribeOptions extends CallOptions {
  /**
   * A durable subscriber name: the subscription starts after the subscriber's stored cursor, and
   * `ack()` moves the cursor. A new name starts at `from` and stores its cursor right away.
   */
  readonly subscriber?: string;
  /** Start position when there is no stored cursor (default `'next'`). */
  readonly from?: TopicPosition;
  /**
   * Durable subscribers only: acknowledge each event once the consumer asks for the next one
   * (written after each page or watch batch, and on close). Default false: call `ack()`.
   */
  readonly autoAck?: boolean;
  /** Events per page read (default and maximum `limits.topic.pageEventsMax`). */
  readonly pageEventsMax?: number;
  /** Watch batches buffered for a slow consumer (default and maximum `limits.topic.watchBatchesMax`). */
  readonly watchBatchesMax?: number;
}

/** `details` of the error thrown when a position was removed by retention. */
export interface TopicTrimmedDetails {
  readonly topic: string;
  /** The oldest retained position: resume from here (the events before it are gone). */
  readonly oldestSeq: number;
  /** The position asked for, when it was a seq (or a cursor + 1). */
  readonly requestedSeq?: number;
  /** The position asked for, when it was a revision. */
  readonly requestedRevision?: number;
  readonly subscriber?: string;
}

/**
 * Whether `err` says that a subscription's position was removed by retention. Such errors have
 * code `compacted` (not retryable) and `details.oldestSeq`, where the subscriber can resume.
 */
export function isTopicTrimmed(err: unknown): err is ConclaveError & { details: TopicTrimmedDetails } {
  return ConclaveError.is(err, ErrorCode.Compacted) && typeof err.details?.oldestSeq === 'number';
}
