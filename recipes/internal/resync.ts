/**
 * Why a live copy of store state (ConfigWatcher, ServiceResolver, PrefixCache and what is built on
 * it) re-read the store instead of applying watch events: the history it needed was compacted,
 * it (or its consumer) fell too far behind, or the watch broke and was opened again.
 */
export type ResyncReason = 'compacted' | 'overflow' | 'reconnect';
