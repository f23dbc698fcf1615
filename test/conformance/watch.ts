import { expect, it } from 'vitest';
import type { RegisterTests } from './context.js';
import { collect, eventCount, text } from './util.js';

export const registerWatchTests: RegisterTests = (ctx) => {
  it('watch — events after creation arrive in order with prev_kv', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('w-basic')}k`;
    await kv.put(k, 'v0');
    await using w = kv.watch(k, { prevKv: true });
    await w.ready;
    const r1 = await kv.put(k, 'v1');
    const d = await kv.delete(k);
    const bs = await collect(w, (b) => eventCount(b) >= 2);
    const evs = bs.flatMap((b) => b.events);
    expect(evs.map((e) => e.type)).toEqual(['put', 'delete']);
    expect(text(evs[0]?.kv.value)).toBe('v1');
    expect(text(evs[0]?.prevKv?.value)).toBe('v0');
    expect(evs[0]?.kv.modRevision).toBe(r1.revision);
    expect(evs[1]?.kv.modRevision).toBe(d.revision);
    expect(evs[1]?.kv.version).toBe(0);
    expect(text(evs[1]?.prevKv?.value)).toBe('v1');
  });

  it('watch — ready resolves with the registration revision: without startRevision, exactly the events after it', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('w-ready')}k`;
    const r0 = await kv.put(k, 'before');
    await using w = kv.watch(k);
    const at = await w.ready;
    expect(at).toBeGreaterThanOrEqual(r0.revision);
    // A store revision: readable, and the put before it is there.
    expect(text((await kv.range(k, { revision: at })).kvs[0]?.value)).toBe('before');
    const r1 = await kv.put(k, 'after');
    expect(r1.revision).toBeGreaterThan(at);
    const bs = await collect(w, (b) => eventCount(b) >= 1);
    // Nothing at or before `at` (the put of r0) is delivered.
    expect(bs.flatMap((b) => b.events).map((e) => e.kv.modRevision)).toEqual([r1.revision]);
    // With a start revision in the past, ready still reports the store's revision, not the start.
    await using w2 = kv.watch(k, { startRevision: r0.revision });
    expect(await w2.ready).toBeGreaterThanOrEqual(r1.revision);
    const replay = await collect(w2, (b) => eventCount(b) >= 2);
    expect(replay.flatMap((b) => b.events).map((e) => e.kv.modRevision)).toEqual([r0.revision, r1.revision]);
  });

  it('watch — startRevision is inclusive and replays history', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('w-start');
    const r1 = await kv.put(`${p}a`, '1');
    await kv.put(`${p}a`, '2');
    await kv.put(`${p}b`, '3');
    await using w = kv.watch(p, { prefix: true, startRevision: r1.revision });
    const bs = await collect(w, (b) => eventCount(b) >= 3);
    const evs = bs.flatMap((b) => b.events);
    expect(evs.map((e) => text(e.kv.value))).toEqual(['1', '2', '3']);
    expect(evs[0]?.kv.modRevision).toBe(r1.revision);
  });

  it('watch — the events of one txn share one revision and arrive in one batch', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('w-txn');
    await using w = kv.watch(p, { prefix: true });
    await w.ready;
    const t = await kv.txn({
      compare: [],
      success: [
        { type: 'put', key: `${p}a`, value: '1' },
        { type: 'put', key: `${p}b`, value: '2' },
      ],
      failure: [],
    });
    const bs = await collect(w, (b) => eventCount(b) >= 2);
    expect(bs[0]?.events.length).toBe(2);
    expect(bs[0]?.events.every((e) => e.kv.modRevision === t.revision)).toBe(true);
  });

  it('watch — noPut and noDelete filters', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('w-filter');
    await using noPut = kv.watch(p, { prefix: true, filters: ['noput'] });
    await using noDel = kv.watch(p, { prefix: true, filters: ['nodelete'] });
    await Promise.all([noPut.ready, noDel.ready]);
    await kv.put(`${p}a`, '1');
    await kv.delete(`${p}a`);
    await kv.put(`${p}b`, '2');
    const a = (await collect(noPut, (b) => eventCount(b) >= 1)).flatMap((b) => b.events);
    const b = (await collect(noDel, (bs) => eventCount(bs) >= 2)).flatMap((x) => x.events);
    expect(a.map((e) => e.type)).toEqual(['delete']);
    expect(b.map((e) => e.type)).toEqual(['put', 'put']);
  });

  it('watch — a start revision below compaction ends the watch with compacted and the compact revision', async () => {
    const { kv, prefix } = ctx();
    const k = `${prefix('w-compact')}k`;
    const r1 = await kv.put(k, '1');
    const r2 = await kv.put(k, '2');
    await kv.compact(r2.revision);
    const w = kv.watch(k, { startRevision: r1.revision });
    let err: unknown;
    try {
      await collect(w, () => false, 5000);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'compacted', compactRevision: r2.revision });
    await w.close();
  });

  it('watch — close ends the iterator', async () => {
    const { kv, prefix } = ctx();
    const w = kv.watch(`${prefix('w-close')}k`);
    await w.ready;
    setTimeout(() => void w.close(), 50);
    const bs = await collect(w, () => false, 5000);
    expect(bs).toEqual([]);
  });

  it('watch — aborting its signal closes it', async () => {
    const { kv, prefix } = ctx();
    const ac = new AbortController();
    const w = kv.watch(`${prefix('w-abort')}k`, { signal: ac.signal });
    await w.ready;
    setTimeout(() => ac.abort(), 50);
    const bs = await collect(w, () => false, 5000);
    expect(bs).toEqual([]);
  });

  it('watch — resumes after the connection is cut: every event exactly once, in order', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.cutConnection || !backend.proxied) {
      t.skip();
      return;
    }
    const p = prefix('w-resume');
    const proxied = await backend.proxied();
    try {
      await using w = proxied.kv.watch(p, { prefix: true });
      await w.ready;
      for (let i = 0; i < 5; i++) await kv.put(`${p}k`, `before-${i}`);
      await collect(w, (b) => eventCount(b) >= 5).then((bs) => expect(eventCount(bs)).toBe(5));
      await proxied.cut();
      for (let i = 0; i < 5; i++) await kv.put(`${p}k`, `during-${i}`);
      await proxied.restore();
      for (let i = 0; i < 5; i++) await kv.put(`${p}k`, `after-${i}`);
      const bs = await collect(w, (b) => eventCount(b) >= 10, 15_000);
      const vals = bs.flatMap((b) => b.events.map((e) => text(e.kv.value)));
      expect(vals).toEqual([
        ...Array.from({ length: 5 }, (_, i) => `during-${i}`),
        ...Array.from({ length: 5 }, (_, i) => `after-${i}`),
      ]);
    } finally {
      await proxied.close();
    }
  });
};
