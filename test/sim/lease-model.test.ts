import { describe, expect, it } from 'vitest';
import { beforeFix, current, leaseModelSeeds, runLeaseModel } from './lease-model.js';

const SEEDS = Number(process.env.LEASE_MODEL_SEEDS ?? 200);

/** The first seed at which the checker caught the protocol as it was before the fix (kept as a regression case). */
const BEFORE_FIX_SEED = 1;

describe('lease model — a keep-alive answered TTL t at T means no revocation applies before T + t unless requested', () => {
  it(`${SEEDS} seeds (expiry passes, revocations delayed or failed and re-proposed, late keep-alives, leader changes, a deposed leader still answering) keep the invariant`, () => {
    const { failures, totals } = leaseModelSeeds(SEEDS);
    expect(failures).toEqual([]);
    // The runs did exercise what the invariant is about.
    expect(totals.renewed).toBeGreaterThan(SEEDS * 100);
    expect(totals.refusedWhileExpiring).toBeGreaterThan(SEEDS);
    expect(totals.expiryRevocations).toBeGreaterThan(SEEDS);
    expect(totals.leaderChanges).toBeGreaterThan(SEEDS * 5);
  }, 120_000);

  it(`regression: the protocol before the fix breaks the invariant (seed ${BEFORE_FIX_SEED}), and the current one holds on that seed`, () => {
    const old = runLeaseModel({ seed: BEFORE_FIX_SEED, protocol: beforeFix });
    expect(old.error).toMatch(/revoked at .* but member .* answered a keep-alive with TTL/);
    expect(runLeaseModel({ seed: BEFORE_FIX_SEED, protocol: current }).error).toBeUndefined();
  });

  it('the checker catches the protocol before the fix on most seeds', () => {
    const { failures } = leaseModelSeeds(50, { protocol: beforeFix });
    expect(failures.length).toBeGreaterThan(25);
  });

  it('the checker also catches each half of the fix missing: renewing expiring leases, or a new leader promoting before earlier terms apply', () => {
    expect(
      leaseModelSeeds(50, { protocol: { ...beforeFix, promoteAfterEarlierTerms: true } }).failures.length,
    ).toBeGreaterThan(25);
    expect(
      leaseModelSeeds(50, { protocol: { ...current, promoteAfterEarlierTerms: false } }).failures.length,
    ).toBeGreaterThan(0);
  });

  it('the same seed replays exactly', () => {
    expect(runLeaseModel({ seed: 7 })).toEqual(runLeaseModel({ seed: 7 }));
  });
});
