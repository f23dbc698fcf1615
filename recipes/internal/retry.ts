/**
 * Retrying a transaction that lost a race (STM, Counter): the bound on `retriesMax` a caller may
 * ask for, and the randomised pause between attempts.
 */
import { checkInt } from './check.js';
import { backoffMs, sleep } from './timing.js';

/** The largest `retriesMax` a caller may ask for. */
export const retriesLimitMax = 10_000;
/** Longest randomised pause (ms) between two attempts after repeated conflicts. */
export const conflictBackoffMsMax = 100;

/**
 * A randomised pause before attempt `attempt` (none before the second: the first retry usually
 * wins, and etcd's STM does not pause at all); rejects with the signal's reason.
 */
export async function conflictBackoff(attempt: number, signal: AbortSignal | undefined): Promise<void> {
  if (attempt <= 2) return;
  await sleep(Math.random() * backoffMs(attempt - 2, conflictBackoffMsMax, 1), signal);
}

/** Validates a `retriesMax` option. */
export function checkRetriesMax(what: string, n: number): void {
  checkInt(`${what}: retriesMax`, n, 0, retriesLimitMax);
}
