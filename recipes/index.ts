/** The recipes (issues 6 and 7). Only depends on the KV contract in src/. */
export { Barrier } from './barrier.js';
export {
  type ConfigChange,
  type ConfigConflict,
  type ConfigDecoder,
  type ConfigEncoder,
  type ConfigRejection,
  ConfigWatcher,
  type ConfigWritten,
  type ResyncReason,
  type SetConfigOptions,
  setConfig,
  type WatchConfigOptions,
  watchConfig,
} from './config.js';
export { DoubleBarrier } from './double-barrier.js';
export { Election, type Leader, type Leadership, type Observation } from './election.js';
export type { HeldKey } from './internal/hold.js';
export { type LockHandle, type LockHeld, Mutex, type MutexOptions } from './mutex.js';
export {
  type EnqueueResult,
  PriorityQueue,
  type PriorityQueueItem,
  priorityEnqueueAttemptsMax,
  priorityEnqueueBackoffMsMax,
  priorityMax,
  Queue,
  type QueueEmpty,
  type QueueItem,
  queueClaimBatchMax,
  queueClaimRoundsMax,
  queueEnqueueAttemptsMax,
} from './queue.js';
export { type RWLockHandle, type RWLockHeld, RWMutex } from './rw-mutex.js';
export { type Permit, Semaphore } from './semaphore.js';
