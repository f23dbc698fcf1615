import { expect, it } from 'vitest';
import { Counter } from '../../../recipes/counter.js';
import { Isolation, type STM, stm } from '../../../recipes/stm.js';
import { ConclaveError } from '../../../src/errors.js';
import type { KV } from '../../../src/kv.js';
import type { RegisterTests } from '../context.js';
import { text } from '../util.js';

/** A promise that resolves once `n` parties have arrived. */
function rendezvous(n: number): { arrive(): Promise<void> } {
  let count = 0;
  let open!: () => void;
  const opened = new Promise<void>((r) => (open = r));
  return {
    arrive() {
      if (++count >= n) open();
      return opened;
    },
  };
}

/** A KV whose every txn is preceded by an outside write to `key`, so every guarded commit conflicts. */
function alwaysInterfered(kv: KV, key: string): { kv: KV; txns: () => number } {
  let txns = 0;
  const proxy = new Proxy(kv, {
    get(target, prop) {
      if (prop === 'txn') {
        return async (...args: Parameters<KV['txn']>) => {
          txns++;
          await target.put(key, String(1000 + txns));
          return target.txn(...args);
        };
      }
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  return { kv: proxy, txns: () => txns };
}

const num = async (tx: STM, key: string): Promise<number> => Number((await tx.get(key)) ?? '0');

const guarded = [Isolation.SerializableSnapshot, Isolation.Serializable, Isolation.RepeatableReads] as const;

/** Conformance tests of Counter and stm; run on every backend. */
export const registerCounterStmTests: RegisterTests = (ctx) => {
  it('counter — 8 clients adding concurrently lose no update', async () => {
    const { kv, prefix, newKv } = ctx();
    const name = `${prefix('counter-contended')}hits`;
    const clients = await Promise.all(Array.from({ length: 8 }, () => newKv()));
    const perClient = 5;
    let succeeded = 0;
    const seen: number[] = [];
    await Promise.all(
      clients.map(async (c) => {
        const counter = new Counter(c, name);
        for (let i = 0; i < perClient; i++) {
          seen.push(await counter.increment());
          succeeded++;
        }
      }),
    );
    const final = await new Counter(kv, name).get();
    expect(succeeded).toBe(8 * perClient);
    expect(final.value).toBe(succeeded);
    // Every increment returned a distinct value: no two writers ever built on the same read.
    expect(new Set(seen).size).toBe(succeeded);
    expect(Math.max(...seen)).toBe(succeeded);
    // Stored as decimal text, as etcdctl shows it.
    expect(text((await kv.get(name))?.value)).toBe(String(succeeded));
  });

  it('counter — add, decrement and get work from an absent key, which reads as 0 at revision 0', async () => {
    const { kv, prefix } = ctx();
    const c = new Counter(kv, `${prefix('counter-basic')}n`);
    expect(await c.get()).toEqual({ value: 0, revision: 0 });
    expect(await c.add(10)).toBe(10);
    expect(await c.decrement()).toBe(9);
    expect(await c.add(-20)).toBe(-11);
    const g = await c.get();
    expect(g.value).toBe(-11);
    expect(g.revision).toBe((await kv.get(c.name))?.modRevision);
  });

  it('counter — compareAndSet with a stale revision returns Err with the current value and writes nothing', async () => {
    const { kv, prefix } = ctx();
    const c = new Counter(kv, `${prefix('counter-cas')}n`);
    const created = await c.compareAndSet(0, 5);
    expect(created.isOk()).toBe(true);
    const r1 = created.unwrap().revision;
    expect(await c.get()).toEqual({ value: 5, revision: r1 });

    const again = await c.compareAndSet(0, 7);
    expect(again.isErr() && again.error).toEqual({ current: 5, revision: r1 });

    await c.increment();
    const now = await c.get();
    const stale = await c.compareAndSet(r1, 100);
    expect(stale.isErr() && stale.error).toEqual({ current: 6, revision: now.revision });
    expect((await c.get()).value).toBe(6);

    const fresh = await c.compareAndSet(now.revision, 100);
    expect(fresh.isOk()).toBe(true);
    expect(await c.get()).toEqual({ value: 100, revision: fresh.unwrap().revision });
  });

  it('counter — a stored value that is not a decimal integer fails `corrupt`, naming the key', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('counter-corrupt')}n`;
    await kv.put(name, 'twelve');
    const c = new Counter(kv, name);
    const err = await c.increment().catch((e: unknown) => e);
    expect(ConclaveError.is(err, 'corrupt')).toBe(true);
    expect((err as Error).message).toContain(name);
    expect(text((await kv.get(name))?.value)).toBe('twelve');
    await kv.put(name, ' 41\n'); // as `echo 41 | etcdctl put` might leave it
    expect(await c.increment()).toBe(42);
  });

  it('counter — add gives up with `retries-exhausted` after retriesMax lost races', async () => {
    const { kv, prefix } = ctx();
    const name = `${prefix('counter-exhausted')}n`;
    const spoiled = alwaysInterfered(kv, name);
    const c = new Counter(spoiled.kv, name, { retriesMax: 3 });
    const err = await c.increment().catch((e: unknown) => e);
    expect(ConclaveError.is(err, 'retries-exhausted')).toBe(true);
    expect((err as ConclaveError).details?.attempts).toBe(4);
    expect((err as Error).message).toContain('4 times');
    expect(spoiled.txns()).toBe(4);
  });

  it('stm — concurrent transfers between accounts on 8 clients preserve the total (both serializable levels)', async () => {
    const { kv, prefix, newKv } = ctx();
    const clients = await Promise.all(Array.from({ length: 8 }, () => newKv()));
    for (const isolation of [Isolation.SerializableSnapshot, Isolation.Serializable]) {
      const p = prefix(`stm-bank-${isolation}`);
      const accounts = [0, 1, 2, 3].map((i) => `${p}acct/${i}`);
      for (const a of accounts) await kv.put(a, '100');
      let committed = 0;
      await Promise.all(
        clients.map(async (c, n) => {
          for (let i = 0; i < 4; i++) {
            const from = accounts[(n + i) % 4]!;
            const to = accounts[(n + i + 1 + (n % 3)) % 4]!;
            await stm(
              c,
              async (tx) => {
                const [a, b] = await Promise.all([num(tx, from), num(tx, to)]);
                const amount = Math.min(a, 10 + n);
                tx.put(from, String(a - amount));
                tx.put(to, String(b + amount));
              },
              { isolation },
            );
            committed++;
          }
        }),
      );
      expect(committed).toBe(32);
      const balances = (await kv.range(`${p}acct/`, { prefix: true })).kvs.map((x) => Number(text(x.value)));
      expect(balances).toHaveLength(4);
      expect(balances.reduce((s, b) => s + b, 0)).toBe(400);
      for (const b of balances) expect(b).toBeGreaterThanOrEqual(0);
    }
  });

  it('stm — write skew and lost updates happen under ReadCommitted and are prevented by the other levels', async () => {
    const { kv, prefix, newKv } = ctx();
    const [k1, k2] = [await newKv(), await newKv()];
    for (const isolation of [Isolation.ReadCommitted, ...guarded]) {
      // Write skew: two "doctors" each leave the on-call rota if the other is still on it.
      const p = prefix(`stm-skew-${isolation}`);
      const [x, y] = [`${p}x`, `${p}y`];
      await kv.put(x, '1');
      await kv.put(y, '1');
      const bothRead = rendezvous(2);
      const doctor = (c: KV, me: string) =>
        stm(
          c,
          async (tx) => {
            const onCall = (await num(tx, x)) + (await num(tx, y));
            if (tx.attempt === 1) await bothRead.arrive();
            if (onCall >= 2) tx.put(me, '0');
          },
          { isolation },
        );
      const [r1, r2] = await Promise.all([doctor(k1, x), doctor(k2, y)]);
      const onCall = Number(text((await kv.get(x))?.value)) + Number(text((await kv.get(y))?.value));

      // Lost update: two increments that both read before either commits.
      const z = `${p}z`;
      await kv.put(z, '0');
      const bothReadZ = rendezvous(2);
      const inc = (c: KV) =>
        stm(
          c,
          async (tx) => {
            const v = await num(tx, z);
            if (tx.attempt === 1) await bothReadZ.arrive();
            tx.put(z, String(v + 1));
          },
          { isolation },
        );
      await Promise.all([inc(k1), inc(k2)]);
      const z2 = Number(text((await kv.get(z))?.value));

      if (isolation === Isolation.ReadCommitted) {
        expect([onCall, z2, r1.attempts + r2.attempts]).toEqual([0, 1, 2]);
      } else {
        expect([onCall, z2]).toEqual([1, 2]);
        expect(r1.attempts + r2.attempts).toBe(3); // the second committer re-ran once
      }
    }
  });

  it('stm — read skew is visible to fn under RepeatableReads and ReadCommitted, never under the serializable levels', async () => {
    const { kv, prefix } = ctx();
    for (const isolation of Object.values(Isolation)) {
      const p = prefix(`stm-readskew-${isolation}`);
      const [a, b] = [`${p}a`, `${p}b`];
      await kv.put(a, '50');
      await kv.put(b, '50');
      const sums: number[] = [];
      const r = await stm(
        kv,
        async (tx) => {
          const va = await num(tx, a);
          // Between the two reads, someone moves 20 from a to b in one txn.
          if (tx.attempt === 1)
            await kv.txn({
              compare: [],
              success: [
                { type: 'put', key: a, value: '30' },
                { type: 'put', key: b, value: '70' },
              ],
              failure: [],
            });
          sums.push(va + (await num(tx, b)));
          tx.put(`${p}seen`, String(sums.at(-1)));
        },
        { isolation },
      );
      const stored = Number(text((await kv.get(`${p}seen`))?.value));
      switch (isolation) {
        case Isolation.ReadCommitted: // inconsistent view, committed anyway
          expect({ sums, attempts: r.attempts, stored }).toEqual({ sums: [120], attempts: 1, stored: 120 });
          break;
        case Isolation.RepeatableReads: // inconsistent view inside fn, but that attempt never commits
          expect({ sums, attempts: r.attempts, stored }).toEqual({
            sums: [120, 100],
            attempts: 2,
            stored: 100,
          });
          break;
        default: // one snapshot per attempt; the stale first attempt does not commit
          expect({ sums, attempts: r.attempts, stored }).toEqual({
            sums: [100, 100],
            attempts: 2,
            stored: 100,
          });
      }
    }
  });

  it('stm — rereads within an attempt return the first read (RepeatableReads and ReadCommitted, as etcd)', async () => {
    const { kv, prefix } = ctx();
    for (const isolation of [Isolation.RepeatableReads, Isolation.ReadCommitted]) {
      const k = `${prefix(`stm-reread-${isolation}`)}k`;
      await kv.put(k, 'v1');
      const reads: Array<[number, string | undefined, string | undefined]> = [];
      const r = await stm(
        kv,
        async (tx) => {
          const first = await tx.get(k);
          if (tx.attempt === 1) await kv.put(k, 'v2');
          reads.push([tx.attempt, first, await tx.get(k)]);
          tx.put(`${k}-copy`, (await tx.get(k)) ?? '');
        },
        { isolation },
      );
      if (isolation === Isolation.RepeatableReads) {
        // The cached read kept the attempt repeatable; the commit saw the change and re-ran it.
        expect(reads).toEqual([
          [1, 'v1', 'v1'],
          [2, 'v2', 'v2'],
        ]);
        expect(r.attempts).toBe(2);
        expect(text((await kv.get(`${k}-copy`))?.value)).toBe('v2');
      } else {
        expect(reads).toEqual([[1, 'v1', 'v1']]);
        expect(text((await kv.get(`${k}-copy`))?.value)).toBe('v1'); // no commit check
      }
    }
  });

  it('stm — a blind write to a key changed after the snapshot conflicts under SerializableSnapshot only', async () => {
    const { kv, prefix } = ctx();
    const attempts: Record<string, number> = {};
    for (const isolation of Object.values(Isolation)) {
      const p = prefix(`stm-blind-${isolation}`);
      await kv.put(`${p}r`, 'read me');
      await kv.put(`${p}w`, 'old');
      const r = await stm(
        kv,
        async (tx) => {
          const seen = await tx.get(`${p}r`);
          if (tx.attempt === 1) await kv.put(`${p}w`, 'theirs'); // after our first read
          tx.put(`${p}w`, `mine after ${seen}`);
        },
        { isolation },
      );
      attempts[isolation] = r.attempts;
      expect(text((await kv.get(`${p}w`))?.value)).toBe('mine after read me');
    }
    expect(attempts).toEqual({
      [Isolation.SerializableSnapshot]: 2,
      [Isolation.Serializable]: 1,
      [Isolation.RepeatableReads]: 1,
      [Isolation.ReadCommitted]: 1,
    });
  });

  it('stm — range reads see buffered writes and conflict on keys inserted, changed or deleted in the range', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('stm-range');
    await kv.put(`${p}q/a`, '1');
    await kv.put(`${p}q/b`, '2');
    await kv.put(`${p}other`, 'x');
    const outside: Array<() => Promise<unknown>> = [
      () => kv.put(`${p}q/c`, '3'), // phantom insert
      () => kv.put(`${p}q/a`, '10'), // change
      () => kv.delete(`${p}q/b`), // delete
    ];
    const expected = [['q/a=1', 'q/b=2', 'q/c=3'], ['q/a=10', 'q/b=2'], ['q/a=1']];
    for (const [n, interfere] of outside.entries()) {
      for (const isolation of guarded) {
        const views: string[][] = [];
        const r = await stm(
          kv,
          async (tx) => {
            const before = await tx.range(`${p}q/`);
            if (tx.attempt === 1) await interfere();
            tx.put(`${p}q/z`, 'new');
            tx.del(`${p}q/a`);
            const after = await tx.range(`${p}q/`);
            expect(after.map((e) => e.key)).toEqual([
              ...before.map((e) => e.key).filter((k) => k !== `${p}q/a`),
              `${p}q/z`,
            ]);
            views.push(before.map((e) => `${e.key.slice(p.length)}=${e.value}`));
            tx.put(`${p}count-${n}-${isolation}`, String(before.length));
            tx.del(`${p}q/z`);
          },
          { isolation },
        );
        expect(r.attempts, `${isolation}, interference ${n}`).toBe(2);
        // The first attempt saw the range before the outside write, the committed one after it.
        expect(views).toEqual([['q/a=1', 'q/b=2'], expected[n]]);
        const latest = (await kv.range(`${p}q/`, { prefix: true })).kvs.map((x) =>
          text(x.key)?.slice(p.length),
        );
        expect(latest).toEqual(expected[n]!.map((e) => e.split('=')[0]).filter((k) => k !== 'q/a'));
        expect(text((await kv.get(`${p}count-${n}-${isolation}`))?.value)).toBe(String(expected[n]!.length));
        await kv.put(`${p}q/a`, '1');
        await kv.put(`${p}q/b`, '2');
        await kv.delete(`${p}q/c`);
      }
    }
  });

  it('stm — a range read at an older snapshot revision conflicts with a key inserted after the snapshot', async () => {
    const { kv, prefix } = ctx();
    for (const isolation of [Isolation.SerializableSnapshot, Isolation.Serializable]) {
      const p = prefix(`stm-range-pinned-${isolation}`);
      await kv.put(`${p}first`, 'x');
      await kv.put(`${p}q/a`, '1');
      const counts: number[] = [];
      const r = await stm(
        kv,
        async (tx) => {
          await tx.get(`${p}first`); // fixes the snapshot
          if (tx.attempt === 1) await kv.put(`${p}q/b`, '2'); // inserted after it
          const n = (await tx.range(`${p}q/`)).length;
          counts.push(n);
          tx.put(`${p}count`, String(n));
        },
        { isolation },
      );
      expect({ counts, attempts: r.attempts }).toEqual({ counts: [1, 2], attempts: 2 });
      expect(text((await kv.get(`${p}count`))?.value)).toBe('2');
    }
  });

  it('stm — a retry never mixes the failed commit’s re-reads with reads at a newer revision', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('stm-prefetch-mix');
    await kv.put(`${p}a`, 'v1');
    await kv.put(`${p}c`, 'c');
    const seen: string[] = [];
    const r = await stm(kv, async (tx) => {
      if (tx.attempt === 1) {
        await tx.get(`${p}a`);
        await kv.put(`${p}a`, 'v2'); // the commit fails and re-reads a (v2) for the next attempt
      } else {
        await kv.put(`${p}a`, 'v3'); // newer than that re-read
        await tx.get(`${p}c`); // fixes this attempt's snapshot after v3
      }
      seen.push(`${tx.attempt}:${await tx.get(`${p}a`)}`);
      tx.put(`${p}out`, 'done');
    });
    expect(seen).toEqual(['1:v1', '2:v3']);
    expect(r.attempts).toBe(2);
  });

  it('stm — gives up with `retries-exhausted` after retriesMax + 1 conflicting attempts', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('stm-exhausted')}k`;
    const spoiled = alwaysInterfered(kv, k);
    let runs = 0;
    const err = await stm(
      spoiled.kv,
      async (tx) => {
        runs++;
        tx.put(k, String(Number((await tx.get(k)) ?? 0) + 1));
      },
      { retriesMax: 4 },
    ).catch((e: unknown) => e);
    expect(ConclaveError.is(err, 'retries-exhausted')).toBe(true);
    expect((err as ConclaveError).details?.attempts).toBe(5);
    expect((err as Error).message).toContain('5 attempts');
    expect(runs).toBe(5);
    expect(spoiled.txns()).toBe(5);
  });

  it('stm — an abort rejects with the signal’s reason and commits nothing; fn’s own error does the same', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('stm-abort')}k`;
    await kv.put(k, 'before');
    const ac = new AbortController();
    const reason = new Error('stop now');
    let reached = false;
    const p = stm(
      kv,
      async (tx) => {
        await tx.get(k);
        tx.put(k, 'after');
        ac.abort(reason);
        reached = true;
        await tx.get(`${k}-other`); // rejects: the signal fired
      },
      { signal: ac.signal },
    );
    await expect(p).rejects.toBe(reason);
    expect(reached).toBe(true);
    expect(text((await kv.get(k))?.value)).toBe('before');

    // Already aborted: fn never runs.
    let ran = false;
    await expect(stm(kv, () => void (ran = true), { signal: AbortSignal.abort(reason) })).rejects.toBe(
      reason,
    );
    expect(ran).toBe(false);

    const boom = new Error('fn failed');
    await expect(
      stm(kv, async (tx) => {
        tx.put(k, 'after');
        throw boom;
      }),
    ).rejects.toBe(boom);
    expect(text((await kv.get(k))?.value)).toBe('before');
  });

  it('stm — an attempt whose pinned revision is compacted mid-way is re-run; prefetch and rev read the same snapshot', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('stm-compacted');
    await kv.put(`${p}a`, '1');
    await kv.put(`${p}b`, '2');
    const revs: number[] = [];
    const r = await stm(
      kv,
      async (tx) => {
        const a = await num(tx, `${p}a`); // prefetched: no read here
        if (tx.attempt === 1) {
          const w = await kv.put(`${p}b`, '3');
          await kv.compact(w.revision);
        }
        const b = await num(tx, `${p}b`);
        revs.push(await tx.rev(`${p}b`));
        tx.put(`${p}sum`, String(a + b));
        return a + b;
      },
      { prefetch: [`${p}a`] },
    );
    expect(r.attempts).toBe(2);
    expect(r.value).toBe(4);
    expect(revs).toEqual([(await kv.get(`${p}b`))?.modRevision]);
    expect(text((await kv.get(`${p}sum`))?.value)).toBe('4');
  });
};
