/** The recipes. Only depends on the KV contract in src/. */
export { Barrier } from './barrier.js';
export {
  type ConfigChange,
  type ConfigConflict,
  type ConfigDecoder,
  type ConfigEncoder,
  type ConfigInvalid,
  type ConfigRejection,
  ConfigWatcher,
  type ConfigWritten,
  type ResyncReason,
  type SetConfigOptions,
  setConfig,
  type WatchConfigOptions,
  watchConfig,
} from './config.js';
export {
  Counter,
  type CounterConflict,
  type CounterOptions,
  type CounterValue,
} from './counter.js';
export { DoubleBarrier } from './double-barrier.js';
export {
  Election,
  type ElectionOptions,
  type Leader,
  type Leadership,
  type LeaderTerm,
  type Observation,
  type Recampaign,
  type RunWhileLeaderOptions,
} from './election.js';
export {
  type GroupChange,
  GroupMember,
  type GroupMemberInfo,
  GroupView,
  type GroupViewOptions,
  type JoinOptions,
  joinGroup,
  watchGroup,
} from './group.js';
export type { HeldKey } from './internal/hold.js';
export {
  type RevocationOptions,
  type RevocationRequest,
  requestRevocation,
} from './internal/revocation.js';
export { limits } from './limits.js';
export {
  MultiLock,
  type MultiLockHandle,
  type MultiLockHeld,
} from './multi-lock.js';
export { type LockHandle, type LockHeld, Mutex, type MutexOptions } from './mutex.js';
export * from './naming.js';
export {
  buildRing,
  type MovedItem,
  type PartitionChange,
  Partitioner,
  type PartitionerOptions,
  type Ring,
  type RingMember,
  ringOwners,
} from './partitioner.js';
export {
  PrefixCache,
  type PrefixCacheChange,
  type PrefixCacheChangesOptions,
  type PrefixCacheEvent,
  type PrefixCacheOptions,
  type PrefixCacheResync,
} from './prefix-cache.js';
export {
  type EnqueueResult,
  PriorityQueue,
  type PriorityQueueItem,
  Queue,
  type QueueEmpty,
  type QueueItem,
} from './queue.js';
export { type RWLockHandle, type RWLockHeld, RWMutex, type RWMutexOptions } from './rw-mutex.js';
export { type Permit, Semaphore, type SemaphoreOptions } from './semaphore.js';
export {
  Isolation,
  type STM,
  type StmEntry,
  type StmOptions,
  type StmRangeOptions,
  type StmResult,
  stm,
} from './stm.js';
export { Topic } from './topic.js';
export { type SubscribedTopic, Subscription } from './topic-subscription.js';
export * from './topic-types.js';
export {
  type AddOptions as WorkQueueAddOptions,
  type ClaimLost,
  type DeadLetter,
  Job,
  type JobHandler,
  type NackOptions as WorkQueueNackOptions,
  type NackOutcome,
  type ProcessOptions as WorkQueueProcessOptions,
  WorkQueue,
  type WorkQueueOptions,
  type WorkQueueStats,
} from './work-queue.js';
