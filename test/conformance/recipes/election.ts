import { expect, it } from 'vitest';
import { Election, type Observation } from '../../../recipes/election.js';
import { handoffState } from '../../../recipes/internal/handoff.js';
import { toText } from '../../../src/keys.js';
import { Session } from '../../../src/session.js';
import type { RegisterTests } from '../context.js';
import { checkLiveness, loopDelay } from '../stall.js';
import { handoffProbe, mortal, sleep, waitFor } from '../util.js';

export const registerElectionTests: RegisterTests = (ctx) => {
  it('election — a resign hands leadership to the next candidate on the same client without a queue re-read', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('elect-handoff')}e`;
    const probe = handoffProbe(kv);
    await using a = await Session.create(probe.kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(probe.kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const la = await new Election(a, name).campaign('a');
    const pb = new Election(b, name).campaign('b');
    await waitFor(
      () => handoffState(probe.kv).waiters === 1,
      5000,
      'candidate b registered as a local waiter',
    );
    const readsBefore = probe.queueReads();
    await la.resign();
    const lb = await pb;
    expect(probe.queueReads()).toBe(readsBefore);
    expect(la.lost.aborted).toBe(true);
    expect(lb.token).toBeGreaterThan(la.token);
    expect(toText((await new Election(a, name).leader())!.value)).toBe('b');
    await lb.resign();
    expect(handoffState(probe.kv)).toEqual({ prefixes: 0, waiters: 0, releases: 0 });
  });

  it("election — runWhileLeader runs the function while leading, aborts its signal on loss, and the next candidate's run takes over", async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('elect-run')}e`;
    const a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const terms: { who: string; token: number; signal: AbortSignal }[] = [];
    const lead = (who: string) => async (t: { signal: AbortSignal; token: number }) => {
      terms.push({ who, token: t.token, signal: t.signal });
      // Work until told to stop.
      await new Promise<void>((r) => t.signal.addEventListener('abort', () => r(), { once: true }));
    };
    const runA = new Election(a, name).runWhileLeader(lead('a'), { value: 'a' }).catch((e: unknown) => e);
    await waitFor(() => terms.length === 1, 10_000, 'a to lead');
    const stopB = new AbortController();
    const runB = new Election(b, name).runWhileLeader(lead('b'), { value: 'b', signal: stopB.signal });
    runB.catch(() => undefined); // awaited below; no unhandled rejection if an assertion fails first
    await sleep(200);
    expect(terms.map((t) => t.who)).toEqual(['a']); // b only campaigns while a leads
    expect(toText((await Election.leader(kv, name))!.value)).toBe('a');
    // a's lease is revoked: its term's signal aborts, its run fails (its next campaign finds the
    // lease gone: session-lost, or lease-not-found if the session has not noticed yet), b takes over.
    await kv.lease.revoke(a.lease);
    await waitFor(() => terms[0]!.signal.aborted, 10_000, "a's term signal");
    expect(['session-lost', 'lease-not-found']).toContain(((await runA) as { code?: string }).code);
    await waitFor(() => terms.length === 2, 10_000, 'b to lead');
    expect(terms[1]!.who).toBe('b');
    expect(terms[1]!.token).toBeGreaterThan(terms[0]!.token);
    // A requested stop: b's term signal aborts, the run resolves, and b resigned.
    stopB.abort(new Error('shutting down'));
    await expect(runB).resolves.toBeUndefined();
    expect(terms[1]!.signal.aborted).toBe(true);
    expect(await Election.leader(kv, name)).toBeUndefined();
    await a.close();
  });

  it('election — runWhileLeader re-campaigns after a term ends (always, never), and a throw while leading rejects after resigning', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('elect-run-policy')}e`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const e = new Election(s, name);
    // 'always' (the default): three terms, each a new campaign with a larger token.
    const tokens: number[] = [];
    const stop = new AbortController();
    await e.runWhileLeader(
      ({ token }) => {
        tokens.push(token);
        if (tokens.length === 3) stop.abort();
      },
      { signal: stop.signal },
    );
    expect(tokens).toHaveLength(3);
    expect(tokens[1]!).toBeGreaterThan(tokens[0]!);
    expect(tokens[2]!).toBeGreaterThan(tokens[1]!);
    // 'never': one term, then it resolves; the key is gone.
    let ran = 0;
    await e.runWhileLeader(() => void ran++, { recampaign: 'never' });
    expect(ran).toBe(1);
    expect(await kv.get(e.key)).toBeUndefined();
    // { delayMs }: the next campaign waits.
    const stop2 = new AbortController();
    const at: number[] = [];
    await e.runWhileLeader(
      () => {
        at.push(performance.now());
        if (at.length === 2) stop2.abort();
      },
      { recampaign: { delayMs: 300 }, signal: stop2.signal },
    );
    expect(at[1]! - at[0]!).toBeGreaterThanOrEqual(290);
    // A failure while still leading: rejects with it, after resigning.
    const boom = new Error('job failed');
    await expect(
      e.runWhileLeader(() => {
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(await kv.get(e.key)).toBeUndefined();
    await expect(
      e.runWhileLeader(() => undefined, { recampaign: 'sometimes' as never }),
    ).rejects.toMatchObject({
      code: 'invalid-argument',
    });
  });

  it('election — one leader at a time; the next candidate wins when the leader resigns', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('elect-one')}e`;
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const la = await new Election(a, name).campaign('a');
    let bWon = false;
    const pb = new Election(b, name).campaign('b').then((l) => {
      bWon = true;
      return l;
    });
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'candidate b',
    );
    expect(bWon).toBe(false);
    expect(toText((await new Election(a, name).leader())!.value)).toBe('a');
    await la.resign();
    const lb = await pb;
    expect(lb.token).toBeGreaterThan(la.token);
    expect(toText((await new Election(a, name).leader())!.value)).toBe('b');
    await lb.resign();
  });

  it('election — observe reports every change, including no leader, and proclaimed values', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('elect-observe')}e`;
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const seen: Array<string> = [];
    const ac = new AbortController();
    const obs = (async () => {
      try {
        for await (const o of new Election(a, name).observe({
          signal: ac.signal,
        }) as AsyncGenerator<Observation>) {
          seen.push(o.leader ? toText(o.leader.value) : '(none)');
        }
      } catch {
        // aborted
      }
    })();
    await waitFor(() => seen.length === 1, 5000, 'initial observation');
    const l = await new Election(a, name).campaign('v1');
    await waitFor(() => seen.includes('v1'), 5000, 'v1');
    await l.proclaim('v2');
    await waitFor(() => seen.includes('v2'), 5000, 'v2');
    await l.resign();
    await waitFor(() => seen.length === 4, 5000, 'no leader again');
    ac.abort();
    await obs;
    expect(seen).toEqual(['(none)', 'v1', 'v2', '(none)']);
  });

  it('election — Election.observe(kv, name) watches without a session; aborting its signal ends it normally', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('elect-observe-kv')}e`;
    const ac = new AbortController();
    const seen: string[] = [];
    const obs = (async () => {
      for await (const o of Election.observe(kv, name, { signal: ac.signal }))
        seen.push(o.leader ? `${toText(o.leader.value)}@${o.leader.token}` : '(none)');
      return 'ended';
    })();
    await waitFor(() => seen.length === 1, 5000, 'initial observation');
    expect(await Election.leader(kv, name)).toBeUndefined();
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const l = await new Election(a, name).campaign('v1');
    await waitFor(() => seen.length === 2, 5000, 'the leader');
    expect(seen).toEqual(['(none)', `v1@${l.token}`]);
    expect((await Election.leader(kv, name))?.token).toBe(l.token);
    ac.abort();
    expect(await obs).toBe('ended'); // a requested stop is not an error
    await l.resign();
    expect(() => Election.observe(kv, '')).toThrow(expect.objectContaining({ code: 'invalid-argument' }));
  });

  it("election — the leader's session expiring elects the next candidate and fires lost", async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('elect-expire')}e`;
    const a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const la = await new Election(a, name).campaign('a');
    const pb = new Election(b, name).campaign('b');
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'candidate b',
    );
    await kv.lease.revoke(a.lease);
    const lb = await pb;
    await waitFor(() => la.lost.aborted, 3000, "the old leader's lost");
    await expect(la.proclaim('stale')).rejects.toMatchObject({ code: 'session-lost' });
    expect(lb.token).toBeGreaterThan(la.token);
    await lb.resign();
  });

  it("election — the leader's process dies: the next candidate leads within the session TTL + 1 s, after the old leader's lost fired", async () => {
    const { prefix, backend, newKv } = ctx();
    const name = `${prefix('elect-die')}e`;
    const ttlSeconds = Math.max(2, backend.minTtlSeconds);
    const doomed = mortal(await newKv());
    const probe = loopDelay();
    const a = await Session.create(doomed.kv, { ttlSeconds });
    // The next candidate's lease has room to spare: only the dying leader's TTL is under test.
    await using b = await Session.create(await newKv(), { ttlSeconds: ttlSeconds + 5 });
    const la = await new Election(a, name).campaign('a');
    let lostAt = 0;
    la.lost.addEventListener('abort', () => (lostAt = performance.now()));
    let oldLeaderAtHandover = '';
    const pb = new Election(b, name).campaign('b').then((l) => {
      // Read at the moment b leads (the getter fires `lost` if a stalled loop ran its timer late).
      oldLeaderAtHandover = a.state;
      return l;
    });
    await sleep(50);
    // The process dies: no resign, no revoke; keep-alives stop.
    const diedAt = performance.now();
    doomed.die();
    const lb = await pb;
    const tookMs = performance.now() - diedAt;
    expect(lb.token).toBeGreaterThan(la.token);
    // Safety: the old leader had lost before the server could give leadership away.
    expect(oldLeaderAtHandover).toBe('lost');
    expect(lostAt).toBeGreaterThan(0);
    expect(lostAt).toBeLessThan(performance.now());
    // Liveness, within the TTL + 1 s, only if this process did not stall meanwhile.
    checkLiveness(probe, 500, 'election failover time', () => {
      expect(tookMs, `failover took ${tookMs.toFixed(0)} ms with a ${ttlSeconds} s TTL`).toBeLessThanOrEqual(
        ttlSeconds * 1000 + 1000,
      );
    });
    probe.stop();
    await lb.resign();
    await a.close().catch(() => undefined);
  });

  it('election — a cancelled campaign leaves no key behind', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('elect-cancel')}e`;
    await using a = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using b = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const la = await new Election(a, name).campaign('a');
    const ac = new AbortController();
    const pb = new Election(b, name).campaign('b', { signal: ac.signal });
    await waitFor(
      async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
      5000,
      'candidate b',
    );
    ac.abort();
    await expect(pb).rejects.toBeDefined();
    expect((await kv.range(`${name}/`, { prefix: true })).count).toBe(1);
    await la.resign();
  });

  it('election — five candidates lead one at a time, in campaign order, and observe sees each term', async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('elect-five')}e`;
    const ss = await Promise.all(
      Array.from({ length: 5 }, () => Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 })),
    );
    const ac = new AbortController();
    const seen: Observation[] = [];
    const obs = (async () => {
      for await (const o of new Election(ss[0]!, name).observe({ signal: ac.signal })) seen.push(o);
    })().catch(() => undefined);
    await waitFor(() => seen.length === 1, 5000, 'the first observation (no leader)');
    let leaders = 0;
    let overlaps = 0;
    const order: number[] = [];
    const tokens: number[] = [];
    const campaigns: Promise<void>[] = [];
    for (let i = 0; i < ss.length; i++) {
      const e = new Election(ss[i]!, name);
      campaigns.push(
        e.campaign(`c${i}`).then(async (l) => {
          if (++leaders > 1) overlaps++;
          order.push(i);
          tokens.push(l.token);
          await sleep(20);
          leaders--;
          await l.resign();
        }),
      );
      // Campaign in a known order: wait until this candidate's key exists.
      await waitFor(
        async () => (await kv.get(e.key)) !== undefined || order.includes(i),
        5000,
        `candidate ${i}`,
      );
    }
    await Promise.all(campaigns);
    await waitFor(() => seen.at(-1)?.leader === undefined && seen.length > 1, 5000, 'no leader at the end');
    ac.abort();
    await obs;
    expect(overlaps).toBe(0);
    expect(order).toEqual([0, 1, 2, 3, 4]);
    expect([...tokens].sort((x, y) => x - y)).toEqual(tokens);
    const observedTerms = seen.flatMap((o) => (o.leader ? [o.leader.token] : []));
    expect(seen[0]!.leader).toBeUndefined();
    expect(observedTerms).toEqual(tokens);
    expect(seen.at(-1)!.leader).toBeUndefined();
    await Promise.all(ss.map((s) => s.close()));
  });
};
