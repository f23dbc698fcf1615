/**
 * The package's named bounds and defaults in one place: the KV contract's (flat, as in
 * `src/limits.ts`) and each recipe's (grouped by recipe). Applications read them here
 * (`limits.workQueue.concurrencyMax`); the recipes' modules keep them as constants of their own.
 */
import { limits as contractLimits } from '../src/limits.js';
import { configChangesBufferedMax, configDebounceMsDefault } from './config.js';
import { setConfigAttemptsMax } from './config-write.js';
import { counterRetriesMax } from './counter.js';
import { groupChangesBufferedMax, groupDataBytesMax, groupMembersMax } from './group.js';
import { configKeysMax } from './internal/config-common.js';
import {
  downErrorThresholdDefault,
  downErrorThresholdMax,
  downErrorWindowMsDefault,
  downMsDefault,
  healthCheckIntervalMsDefault,
  healthCheckTimeoutMsDefault,
  namingBackoffMsMax,
  namingCacheKeysMax,
  namingChangesBufferedMax,
  namingInstancesMax,
  namingRegisterAttemptsMax,
  namingRegistrationsMax,
  namingResyncAttemptsMax,
} from './internal/naming-common.js';
import { retriesLimitMax } from './internal/retry.js';
import { revocationTextBytesMax } from './internal/revocation.js';
import {
  topicBackoffMsMax,
  topicPageEventsMax,
  topicPublishAttemptsMax,
  topicResubscribeAttemptsMax,
  topicSubscriberNameMax,
  topicTrimBatchMax,
  topicTrimRoundsMax,
  topicWatchBatchesMax,
} from './internal/topic-bounds.js';
import { workQueueErrorCharsMax, workQueuePriorityMax } from './internal/work-queue-keys.js';
import { multiLockNamesMax } from './multi-lock.js';
import {
  partitionerChangesBufferedMax,
  partitionerRingPointsMax,
  partitionerTrackedMax,
  partitionerVnodesDefault,
} from './partitioner.js';
import {
  prefixCacheBackoffMsMax,
  prefixCacheBytesMax,
  prefixCacheChangesBufferedMax,
  prefixCacheKeysMax,
  prefixCacheResyncAttemptsMax,
} from './prefix-cache.js';
import {
  priorityEnqueueAttemptsMax,
  priorityEnqueueBackoffMsMax,
  priorityMax,
  queueClaimBatchMax,
  queueClaimRoundsMax,
  queueEnqueueAttemptsMax,
} from './queue.js';
import { stmBackoffMsMax, stmCompareMax, stmRangeKeysMax, stmReadKeysMax, stmRetriesMax } from './stm.js';
import {
  workQueueAttemptsLimitMax,
  workQueueAttemptsMaxDefault,
  workQueueClaimCandidatesMax,
  workQueueClaimRoundsMax,
  workQueueConcurrencyMax,
  workQueueDeadLettersPageMax,
  workQueueDelaySecondsMax,
  workQueueLeasePoolMax,
  workQueueProcessErrorsMax,
  workQueueRevokesPendingMax,
  workQueueVisibilityTimeoutSecondsDefault,
} from './work-queue.js';

/**
 * Named upper bounds on everything fed by outside input, and the defaults of bounded options.
 * A name ending in `Max` is a bound (past it: a `ConclaveError`, a drop or a resync, as each
 * recipe's page says); `…LimitMax` is the largest value a `…Max` option accepts; `…Default` is an
 * option's default. The KV contract's bounds are at the top level, each recipe's under its name.
 */
export const limits = {
  ...contractLimits,
  /** `setConfig`/`watchConfig` (docs/recipes/config.md). */
  config: {
    /** Keys a config prefix may hold; past it reads fail `request-too-large`. */
    keysMax: configKeysMax,
    /** Default `changesBufferedMax` of a watcher's change iterators. */
    changesBufferedMax: configChangesBufferedMax,
    /** Default `debounceMs` of `watchConfig`. */
    debounceMsDefault: configDebounceMsDefault,
    /** Attempts of an unguarded `setConfig` whose txn lost a race with another writer. */
    setAttemptsMax: setConfigAttemptsMax,
  },
  /** `Counter` (docs/recipes/counter.md). */
  counter: {
    /** Default `retriesMax`. */
    retriesMaxDefault: counterRetriesMax,
    /** The largest `retriesMax` accepted. */
    retriesLimitMax,
  },
  /** `joinGroup`/`watchGroup` (docs/recipes/group.md). */
  group: {
    /** Default `membersMax` of a view. */
    membersMax: groupMembersMax,
    /** Default `dataBytesMax` of a view (bytes of member data it holds). */
    dataBytesMax: groupDataBytesMax,
    /** Default `changesBufferedMax` of a view's change iterators. */
    changesBufferedMax: groupChangesBufferedMax,
  },
  /** `MultiLock` (docs/recipes/multi-lock.md). */
  multiLock: {
    /** Names one multi-lock may take. */
    namesMax: multiLockNamesMax,
  },
  /** `ServiceRegistry`/`ServiceResolver` (docs/recipes/naming.md). */
  naming: {
    /** Default `instancesMax` of a resolver. */
    instancesMax: namingInstancesMax,
    /** Keys under one service a resolver caches; past it the resolver fails `too-many-requests`. */
    cacheKeysMax: namingCacheKeysMax,
    /** Default `changesBufferedMax` of a resolver's change iterators. */
    changesBufferedMax: namingChangesBufferedMax,
    /** Registrations one registry holds at once. */
    registrationsMax: namingRegistrationsMax,
    /** Attempts to (re-)register an endpoint before its registration fails. */
    registerAttemptsMax: namingRegisterAttemptsMax,
    /** Consecutive failed resyncs before a resolver fails. */
    resyncAttemptsMax: namingResyncAttemptsMax,
    /** Longest back-off (ms) between two attempts. */
    backoffMsMax: namingBackoffMsMax,
    /** Default health-check interval (ms). */
    healthCheckIntervalMsDefault,
    /** Default health-check timeout (ms). */
    healthCheckTimeoutMsDefault,
    /** Default errors within the window that mark an instance down. */
    downErrorThresholdDefault,
    /** The largest `downErrorThreshold` accepted. */
    downErrorThresholdMax,
    /** Default error window (ms). */
    downErrorWindowMsDefault,
    /** Default time (ms) an instance stays marked down. */
    downMsDefault,
  },
  /** `Partitioner` (docs/recipes/partitioner.md). */
  partitioner: {
    /** Default virtual nodes per unit of weight. */
    vnodesDefault: partitionerVnodesDefault,
    /** Points one ring may hold (members × weight × vnodes). */
    ringPointsMax: partitionerRingPointsMax,
    /** Items one partitioner tracks for its `moved` events. */
    trackedMax: partitionerTrackedMax,
    /** Default `changesBufferedMax` of its change iterators. */
    changesBufferedMax: partitionerChangesBufferedMax,
  },
  /** `PrefixCache` (docs/recipes/prefix-cache.md). */
  prefixCache: {
    /** Default `keysMax`. */
    keysMax: prefixCacheKeysMax,
    /** Default `bytesMax`. */
    bytesMax: prefixCacheBytesMax,
    /** Default `changesBufferedMax` of its change iterators. */
    changesBufferedMax: prefixCacheChangesBufferedMax,
    /** Consecutive failed resyncs before the cache fails. */
    resyncAttemptsMax: prefixCacheResyncAttemptsMax,
    /** Longest back-off (ms) between two resync attempts. */
    backoffMsMax: prefixCacheBackoffMsMax,
  },
  /** `Queue` and `PriorityQueue` (docs/recipes/queue.md). */
  queue: {
    /** Items read per claim round. */
    claimBatchMax: queueClaimBatchMax,
    /** Claim rounds lost entirely before `retries-exhausted`. */
    claimRoundsMax: queueClaimRoundsMax,
    /** Attempts of one `Queue` enqueue whose key already existed. */
    enqueueAttemptsMax: queueEnqueueAttemptsMax,
    /** Attempts of one `PriorityQueue` enqueue that lost the sequence race. */
    priorityEnqueueAttemptsMax,
    /** Longest back-off (ms) between two priority enqueue attempts. */
    priorityEnqueueBackoffMsMax,
    /** The largest priority. */
    priorityMax,
  },
  /** Revocation requests (docs/recipes/mutex.md). */
  revocation: {
    /** UTF-8 bytes of a request's `by` and `reason` together. */
    textBytesMax: revocationTextBytesMax,
  },
  /** `stm` (docs/recipes/stm.md). */
  stm: {
    /** Default `retriesMax`. */
    retriesMaxDefault: stmRetriesMax,
    /** The largest `retriesMax` accepted. */
    retriesLimitMax,
    /** Keys one attempt may hold in its read cache. */
    readKeysMax: stmReadKeysMax,
    /** Keys one range read inside a transaction may return. */
    rangeKeysMax: stmRangeKeysMax,
    /** Compares and writes one commit may carry (etcd's default `--max-txn-ops`). */
    compareMax: stmCompareMax,
    /** Longest back-off (ms) between two attempts. */
    backoffMsMax: stmBackoffMsMax,
  },
  /** `Topic` (docs/recipes/topic.md). */
  topic: {
    /** Default and largest `pageEventsMax` of a subscription. */
    pageEventsMax: topicPageEventsMax,
    /** Default and largest `watchBatchesMax` of a subscription. */
    watchBatchesMax: topicWatchBatchesMax,
    /** Attempts of one publish that lost the sequence race. */
    publishAttemptsMax: topicPublishAttemptsMax,
    /** Events removed by one trim txn. */
    trimBatchMax: topicTrimBatchMax,
    /** Trim txns of one `trim()`. */
    trimRoundsMax: topicTrimRoundsMax,
    /** Consecutive failed re-reads or re-watches before a subscription fails. */
    resubscribeAttemptsMax: topicResubscribeAttemptsMax,
    /** Longest back-off (ms) between two attempts. */
    backoffMsMax: topicBackoffMsMax,
    /** Longest durable subscriber name (characters). */
    subscriberNameMax: topicSubscriberNameMax,
  },
  /** `WorkQueue` (docs/recipes/work-queue.md). */
  workQueue: {
    /** Default `visibilityTimeoutSeconds`. */
    visibilityTimeoutSecondsDefault: workQueueVisibilityTimeoutSecondsDefault,
    /** Default `attemptsMax`. */
    attemptsMaxDefault: workQueueAttemptsMaxDefault,
    /** The largest `attemptsMax` accepted. */
    attemptsLimitMax: workQueueAttemptsLimitMax,
    /** The largest priority. */
    priorityMax: workQueuePriorityMax,
    /** The largest `delaySeconds`. */
    delaySecondsMax: workQueueDelaySecondsMax,
    /** Characters of a failed delivery's error kept with the item. */
    errorCharsMax: workQueueErrorCharsMax,
    /** The largest `concurrency` of `process()`. */
    concurrencyMax: workQueueConcurrencyMax,
    /** Ready keys read per claim round. */
    claimCandidatesMax: workQueueClaimCandidatesMax,
    /** Claim rounds that lost every race before `retries-exhausted`. */
    claimRoundsMax: workQueueClaimRoundsMax,
    /** Consecutive failed claims after which `process()` rejects. */
    processErrorsMax: workQueueProcessErrorsMax,
    /** Lease revocations in flight at once. */
    revokesPendingMax: workQueueRevokesPendingMax,
    /** Claim leases kept for reuse. */
    leasePoolMax: workQueueLeasePoolMax,
    /** Dead letters one `deadLetters()` call returns. */
    deadLettersPageMax: workQueueDeadLettersPageMax,
  },
} as const;
