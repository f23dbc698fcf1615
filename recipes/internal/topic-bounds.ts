/** The topic recipe's bounds (public as `limits.topic`), shared by `Topic` and `Subscription`. */
import { backoffMs as backoffStepMs } from './timing.js';

/** Events read per page (and so held in memory per subscription while paging). */
export const topicPageEventsMax = 100;
/** Watch batches buffered per subscription for a slow consumer; past it the subscription re-reads. */
export const topicWatchBatchesMax = 64;
/** Attempts of one publish that lost the sequence race to other publishers. */
export const topicPublishAttemptsMax = 64;
/** Events removed by one trim txn (one range delete); trimming more takes several txns. */
export const topicTrimBatchMax = 100;
/** Trim txns one `trim()` call runs at most. */
export const topicTrimRoundsMax = 100;
/** Consecutive failed attempts to re-read or re-watch (after `unavailable` etc.) before a subscription fails. */
export const topicResubscribeAttemptsMax = 20;
/** Longest back-off (ms) between two attempts of a publish or a re-subscription. */
export const topicBackoffMsMax = 1000;
/** Longest durable subscriber name (characters). */
export const topicSubscriberNameMax = 256;
/** Digits of a sequence number in keys: enough for every safe integer. */
export const topicSeqDigits = 16;

/** Jittered exponential back-off for attempt `n` (1-based), at most `limits.topic.backoffMsMax`. */
export const topicBackoffJitterMs = (n: number): number =>
  Math.random() * backoffStepMs(n, topicBackoffMsMax, 5);
