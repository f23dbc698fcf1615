/** Every phase by its command-line name. */
import { electionFailoverPhase } from './election-failover.js';
import { getPhase } from './get.js';
import { lockHandoffPhase } from './lock-handoff.js';
import { putPhase } from './put.js';
import { configPhase } from './recipes-config.js';
import { multiLockPhase } from './recipes-multi-lock.js';
import { prefixCachePhase } from './recipes-prefix-cache.js';
import { queuePhase } from './recipes-queue.js';
import { revocationPhase } from './recipes-revocation.js';
import { workQueuePhase } from './recipes-work-queue.js';
import { scaleLeasesPhase, scalePutPhase, scaleWatchPrefixPhase } from './scale.js';
import { txnPhase } from './txn.js';
import type { Phase } from './types.js';
import { watchPhase } from './watch.js';

const phases: readonly Phase[] = [
  putPhase(1),
  putPhase(16),
  putPhase(128),
  getPhase(false),
  getPhase(true),
  txnPhase(16),
  watchPhase(100, 100),
  lockHandoffPhase(8),
  lockHandoffPhase(8, true),
  electionFailoverPhase(2),
  queuePhase(4, 4),
  workQueuePhase(4, 16),
  configPhase(100, 0),
  configPhase(100, undefined),
  multiLockPhase(8, 3, false),
  multiLockPhase(8, 3, true),
  prefixCachePhase(100, false),
  prefixCachePhase(100, true),
  revocationPhase(),
  ...[0, 1000, 10_000, 100_000].map((n) => scalePutPhase(n)),
  scaleWatchPrefixPhase(10_000, 100),
  ...[0, 10_000, 100_000].map((n) => scaleLeasesPhase(n)),
];

export function phaseByName(name: string): Phase {
  const p = phases.find((x) => x.name === name);
  if (p === undefined) throw new TypeError(`unknown phase "${name}"`);
  return p;
}
