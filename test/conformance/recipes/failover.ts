/**
 * Recipes across a leader failure of the store (backends with `supports.killLeader`: the embedded
 * Raft cluster). Locks are held and contended while the leader is killed: mutual exclusion must
 * hold among live holders, and waiters must proceed once a new leader is elected.
 */
import { expect, it } from 'vitest';
import { Mutex } from '../../../recipes/mutex.js';
import { ConclaveError } from '../../../src/errors.js';
import { Session } from '../../../src/session.js';
import type { RegisterTests } from '../context.js';
import { sleep, waitFor } from '../util.js';

/** Attempts per operation across the failover (each failed attempt waits 100 ms). */
const attemptsMax = 100;

async function retrying<T>(op: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await op();
    } catch (err) {
      if (attempt >= attemptsMax || !(err instanceof ConclaveError) || err.code === 'session-lost') throw err;
      await sleep(100);
    }
  }
}

export const registerFailoverTests: RegisterTests = (ctx) => {
  it('mutex — killing the store leader while locks are held and contended keeps exclusion, and waiters proceed', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.killLeader || !backend.killLeader) {
      t.skip();
      return;
    }
    const name = `${prefix('mutex-failover')}lock`;
    const workers = 5;
    const sessions = await Promise.all(
      Array.from({ length: workers }, () => Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 8 })),
    );
    let holders = 0;
    let overlaps = 0;
    let acquisitions = 0;
    let afterKill = 0;
    let killed = false;
    let stop = false;
    const tokens: number[] = [];
    const run = async (s: Session) => {
      const m = new Mutex(s, name, { lostOnSuspend: false });
      while (!stop) {
        const h = await retrying(() => m.lock());
        if (++holders > 1) overlaps++;
        acquisitions++;
        if (killed) afterKill++;
        tokens.push(h.token);
        await sleep(5);
        holders--;
        await retrying(() => h.unlock());
      }
    };
    const running = sessions.map((s) => run(s));
    await waitFor(() => acquisitions >= 10, 10_000, 'acquisitions before the kill');
    await backend.killLeader();
    killed = true;
    await waitFor(() => afterKill >= 10, 20_000, 'acquisitions after the kill');
    stop = true;
    await Promise.all(running);
    expect(overlaps).toBe(0);
    // Fencing tokens strictly grow across the failover, one owner after another.
    expect([...tokens].sort((a, b) => a - b)).toEqual(tokens);
    expect(new Set(tokens).size).toBe(tokens.length);
    await Promise.all(sessions.map((s) => s.close().catch(() => undefined)));
  }, 60_000);
};
