/** The recipes (issue 6/7). Only depends on the KV contract in src/. */
export { Election, type Leader, type Leadership, type Observation } from './election.js';
export { type LockHandle, type LockHeld, Mutex, type MutexOptions } from './mutex.js';
