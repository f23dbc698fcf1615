/** The pure Raft core: pure, deterministic, no I/O, no timers and no clock. */
export { ProposalDropped, RaftInvariantError } from './assert.js';
export { MemoryStorage } from './memory-storage.js';
export type { NodeStorage, ReadyToSave } from './node-storage.js';
export { decodeConfChange, encodeConfChange, Raft } from './raft.js';
export { pendingReadsMax } from './read-only.js';
export * from './types.js';
