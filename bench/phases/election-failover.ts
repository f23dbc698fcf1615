/**
 * Election failover: the leader's process dies, and we measure the time from its death
 * to an observer seeing the next candidate lead. Target: at most the session TTL + 1 s.
 *
 * A dying process is modelled by its client going silent at once: no resign, no revoke, no more
 * keep-alives (every call it makes fails from that moment). That is all a server sees of a
 * killed process — etcd does not tie a lease to a connection — so the next candidate takes over
 * only when the server expires the old leader's lease. Each round uses fresh sessions: the dying
 * leader's (on the silenced client), a waiting candidate's, and an observer's (`observe()`).
 *
 * Reported: failovers done, and death → new leader observed p50/p99/max, beside the TTL and the
 * target. The rounds are bounded by count (`failoverRoundsMax`) and by the phase's duration.
 */
import { Election } from '../../recipes/election.js';
import type { KV } from '../../src/kv.js';
import { Session } from '../../src/session.js';
// The conformance suite's dying client: every call after die() throws `closed`.
import { mortal } from '../../test/conformance/util.js';
import { nowMs } from '../clock.js';
import { round } from '../cpu.js';
import { Histogram } from '../histogram.js';
import { conclaveKvOf } from './recipes-common.js';
import type { Phase, PhaseContext, PhaseResult } from './types.js';

/** Failovers measured per run at most (each takes about a TTL). */
export const failoverRoundsMax = 8;
/** How long one failover may take before the round is declared failed. */
const failoverTimeoutMs = 30_000;

export function electionFailoverPhase(ttlSeconds: number): Phase {
  return {
    name: 'election-failover',
    description: `election: the leader's process dies (client silent, ${ttlSeconds} s session TTL) → next leader observed`,
    run: async (ctx) => runFailovers(ctx, conclaveKvOf(ctx, 'election'), ttlSeconds),
  };
}

async function runFailovers(ctx: PhaseContext, kv: KV, ttlSeconds: number): Promise<PhaseResult> {
  const took = new Histogram();
  const started = nowMs();
  let rounds = 0;
  let over = 0;
  const targetMs = ttlSeconds * 1000 + 1000;
  while (rounds < Math.min(failoverRoundsMax, ctx.opsMax) && nowMs() - started < ctx.durationMs) {
    ctx.signal.throwIfAborted();
    const ms = await oneFailover(kv, `${ctx.prefix}/election-${rounds}`, ttlSeconds, ctx.signal);
    took.recordMs(ms);
    if (ms > targetMs) over++;
    rounds++;
  }
  const elapsedMs = nowMs() - started;
  return {
    ops: rounds,
    elapsedMs: round(elapsedMs),
    opsPerSec: round((rounds * 1000) / elapsedMs),
    latency: took.summary(),
    extra: { ttlSeconds, targetMs, overTarget: over },
  };
}

/** One failover; resolves with death → the candidate observed as leader, in ms. */
async function oneFailover(kv: KV, name: string, ttlSeconds: number, outer: AbortSignal): Promise<number> {
  const signal = AbortSignal.any([outer, AbortSignal.timeout(failoverTimeoutMs)]);
  const doomed = mortal(kv);
  const a = await Session.create(doomed.kv, { ttlSeconds });
  const b = await Session.create(kv, { ttlSeconds });
  const watcher = await Session.create(kv, { ttlSeconds });
  const stopObserving = new AbortController();
  try {
    await new Election(a, name).campaign('a', { signal });
    const candidate = new Election(b, name).campaign('b', { signal });
    candidate.catch(() => undefined);
    // The observer sees the leader, then (after the death) the candidate.
    let diedAt = Number.NaN;
    let sawA!: () => void;
    const leaderA = new Promise<void>((r) => (sawA = r));
    const observed = (async () => {
      const obs = new Election(watcher, name).observe({
        signal: AbortSignal.any([signal, stopObserving.signal]),
      });
      for await (const o of obs) {
        const v = o.leader ? new TextDecoder().decode(o.leader.value) : undefined;
        if (v === 'a') sawA();
        if (v === 'b') return nowMs() - diedAt;
      }
      throw new Error('observe ended before the candidate led');
    })();
    observed.catch(() => undefined);
    await leaderA;
    // The candidate is queued behind the leader before the leader dies.
    while ((await kv.range(`${name}/`, { prefix: true, countOnly: true, signal })).count < 2)
      await new Promise((r) => setTimeout(r, 5));
    diedAt = nowMs();
    doomed.die();
    const ms = await observed;
    await (await candidate).resign();
    return ms;
  } finally {
    stopObserving.abort();
    await Promise.all([a.close(), b.close(), watcher.close()].map((p) => p.catch(() => undefined)));
  }
}
