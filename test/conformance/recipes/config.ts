import { expect, it } from 'vitest';
import { z } from 'zod';
import {
  type ConfigChange,
  ConfigWatcher,
  configPageKeysMax,
  setConfig,
  watchConfig,
} from '../../../recipes/config.js';
import { ConclaveError } from '../../../src/errors.js';
import { toText } from '../../../src/keys.js';
import type { RegisterTests } from '../context.js';
import { afterFirstRead, keys, waitFor } from '../util.js';

const Server = z.object({ host: z.string(), port: z.number().int().positive() });

/** Collects a watcher's changes in the background until it closes. */
function collectChanges<T>(w: ConfigWatcher<T>): { items: ConfigChange<T>[]; done: Promise<unknown> } {
  const items: ConfigChange<T>[] = [];
  const it = w.changes();
  const done = (async () => {
    for await (const c of it) items.push(c);
  })().catch((err: unknown) => err);
  return { items, done };
}

/** Conformance tests of ConfigWatcher / watchConfig / setConfig; run on every backend. */
export const registerConfigTests: RegisterTests = (ctx) => {
  it('config — current is the typed config read at one revision; close() is idempotent', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-typed');
    const written = await setConfig(kv, pfx, { host: 'a.example', port: 8080 });
    expect(written.isOk()).toBe(true);
    const w = await watchConfig(kv, pfx, { schema: Server });
    const port: number = w.current.port; // typed by the schema's output
    expect(port).toBe(8080);
    expect(w.current).toEqual({ host: 'a.example', port: 8080 });
    expect(w.revision).toBe(written.unwrap().revision);
    expect([...w.keys].sort()).toEqual(['host', 'port']);
    const c = collectChanges(w);
    await w.close();
    await w.close();
    await w[Symbol.asyncDispose]();
    expect(await c.done).toBeUndefined(); // the iterator ended cleanly
    expect(w.current.port).toBe(8080);
  });

  it('config — aborting the signal of changes() ends that iterator normally; the watcher goes on', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-changes-stop');
    await setConfig(kv, pfx, { host: 'a', port: 80 });
    await using w = await watchConfig(kv, pfx, { schema: Server, debounceMs: 0 });
    const ac = new AbortController();
    const seen: number[] = [];
    const it = (async () => {
      for await (const c of w.changes({ signal: ac.signal })) seen.push(c.config.port);
      return 'ended';
    })();
    await kv.put(`${pfx}port`, '81');
    await waitFor(() => seen.length === 1, 4000, 'the update');
    ac.abort();
    expect(await it).toBe('ended');
    await kv.put(`${pfx}port`, '82');
    await waitFor(() => w.current.port === 82, 4000, 'the watcher still running');
  });

  it('config — an invalid update keeps the last valid config and reports the schema issues', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-invalid');
    await setConfig(kv, pfx, { host: 'a', port: 80 });
    await using w = await watchConfig(kv, pfx, { schema: Server, debounceMs: 0 });
    const c = collectChanges(w);
    await kv.put(`${pfx}port`, '"eighty-one"');
    await waitFor(() => c.items.length === 1, 4000, 'the rejected update');
    const rejected = c.items[0]!;
    expect(rejected.type).toBe('rejected');
    expect(rejected.result.isErr()).toBe(true);
    const issues = rejected.result.isErr() ? rejected.result.error.issues : [];
    expect(issues.map((i) => i.path?.[0])).toEqual(['port']);
    expect(rejected.config).toEqual({ host: 'a', port: 80 });
    expect(w.current).toEqual({ host: 'a', port: 80 });

    // Undecodable JSON is rejected the same way, naming the key.
    await kv.put(`${pfx}host`, '{not json');
    await waitFor(() => c.items.length === 2, 4000, 'the undecodable update');
    const bad = c.items[1]!;
    expect(bad.type).toBe('rejected');
    expect(bad.result.isErr() && bad.result.error.issues[0]?.path).toEqual(['host']);
    expect(w.current).toEqual({ host: 'a', port: 80 });

    await setConfig(kv, pfx, { host: 'b', port: 81 });
    await waitFor(() => c.items.length === 3, 4000, 'the valid update');
    const ok = c.items[2]!;
    expect(ok.type).toBe('update');
    expect(ok.type === 'update' && ok.previous).toEqual({ host: 'a', port: 80 });
    expect(ok.result.unwrap()).toEqual({ host: 'b', port: 81 });
    expect(w.current).toEqual({ host: 'b', port: 81 });
    expect(w.revision).toBe(ok.revision);
  });

  it('config — a multi-key txn is seen as one change, never half', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-atomic');
    // Valid only when both keys come from the same write.
    const Pair = z.object({ a: z.number(), b: z.number() }).refine((c) => c.b === c.a * 10, 'torn');
    await setConfig(kv, pfx, { a: 0, b: 0 });
    await using w = await watchConfig(kv, pfx, { schema: Pair, debounceMs: 0 });
    const c = collectChanges(w);
    for (let i = 1; i <= 6; i++) {
      const r = await setConfig(kv, pfx, { a: i, b: i * 10 });
      expect(r.unwrap().put).toEqual(['a', 'b']);
    }
    await waitFor(() => w.current.a === 6, 4000, 'the last pair');
    await w.close();
    await c.done;
    expect(c.items.map((x) => x.type)).toEqual(Array(6).fill('update'));
    expect(c.items.map((x) => x.config)).toEqual([1, 2, 3, 4, 5, 6].map((a) => ({ a, b: a * 10 })));
    for (const x of c.items) expect(x.changedKeys).toEqual(['a', 'b']);
  });

  it('config — debounce collapses a burst of writes into one update', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-debounce');
    const Flags = z.record(z.string(), z.number());
    await kv.put(`${pfx}f0`, '0');
    await using w = await watchConfig(kv, pfx, { schema: Flags, debounceMs: 400 });
    const c = collectChanges(w);
    for (let i = 1; i <= 6; i++) await kv.put(`${pfx}f${i}`, String(i));
    await waitFor(() => Object.keys(w.current).length === 7, 4000, 'all seven flags');
    // Each write came well within 400 ms of the previous one: one update (two if the machine
    // stalled for a moment), never one per write.
    expect(c.items.length).toBeGreaterThanOrEqual(1);
    expect(c.items.length).toBeLessThanOrEqual(2);
    expect(c.items.every((x) => x.type === 'update')).toBe(true);
    expect(new Set(c.items.flatMap((x) => x.changedKeys))).toEqual(
      new Set(['f1', 'f2', 'f3', 'f4', 'f5', 'f6']),
    );
    expect(w.current).toEqual({ f0: 0, f1: 1, f2: 2, f3: 3, f4: 4, f5: 5, f6: 6 });
  });

  it('config — a watch whose start revision was compacted recovers with a resync and the right config', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-compact');
    await setConfig(kv, pfx, { host: 'a', port: 80 });
    // Between the watcher's read and its watch: two writes, then compaction past the read.
    const flaky = afterFirstRead(kv, async () => {
      await kv.put(`${pfx}port`, '81');
      const r = await kv.put(`${pfx}host`, '"b"');
      await kv.compact(r.revision);
    });
    await using w = await watchConfig(flaky, pfx, { schema: Server, debounceMs: 0 });
    const c = collectChanges(w);
    expect(w.current).toEqual({ host: 'a', port: 80 });
    await waitFor(() => c.items.length >= 1, 4000, 'the resync');
    const resync = c.items[0]!;
    expect(resync.type).toBe('resync');
    expect(resync.type === 'resync' && resync.reason).toBe('compacted');
    expect(resync.config).toEqual({ host: 'b', port: 81 });
    expect(w.current).toEqual({ host: 'b', port: 81 });
    // The watch resumed after the re-read: later writes arrive as updates.
    await kv.put(`${pfx}port`, '82');
    await waitFor(() => w.current.port === 82, 4000, 'the update after the resync');
    expect(c.items.map((x) => x.type)).toEqual(['resync', 'update']);
  });

  it('config — a watcher cut off while its history is compacted reconnects and resyncs to the right config', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.cutConnection || !backend.proxied) {
      t.skip();
      return;
    }
    const pfx = prefix('cfg-cut');
    await setConfig(kv, pfx, { host: 'a', port: 80 });
    const proxied = await backend.proxied();
    try {
      await using w = await watchConfig(proxied.kv, pfx, { schema: Server, debounceMs: 0 });
      const c = collectChanges(w);
      await proxied.cut();
      await kv.put(`${pfx}port`, '81');
      const r = await kv.put(`${pfx}host`, '"b"');
      await kv.compact(r.revision);
      await proxied.restore();
      await waitFor(() => w.current.host === 'b', 4000, 'the config written while cut off');
      expect(w.current).toEqual({ host: 'b', port: 81 });
      expect(c.items.at(-1)).toMatchObject({ type: 'resync', reason: 'compacted', revision: r.revision });
      await kv.put(`${pfx}port`, '82');
      await waitFor(() => w.current.port === 82, 4000, 'the update after the resync');
    } finally {
      await proxied.close();
    }
  });

  it('config — after a rejected write, a write guarded by the watcher (set, or ifRevision: revision) replaces it', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-guard-after-reject');
    const first = (await setConfig(kv, pfx, { host: 'a', port: 80 })).unwrap();
    await using w = await watchConfig(kv, pfx, { schema: Server, debounceMs: 0 });
    const c = collectChanges(w);
    const bad = await kv.put(`${pfx}port`, '"eighty"');
    await waitFor(() => c.items.length === 1, 4000, 'the rejected update');
    // current is still the last valid config; the guard compares with what is in the store.
    expect(w.current).toEqual({ host: 'a', port: 80 });
    expect(w.currentRevision).toBe(first.revision);
    expect(w.revision).toBe(bad.revision);
    const fixed = await setConfig(
      kv,
      pfx,
      { host: 'a', port: 81 },
      { ifRevision: w.revision, ifKeys: w.keys },
    );
    expect(fixed.isOk()).toBe(true);
    await waitFor(() => w.current.port === 81, 4000, 'the fixed config');

    // set(): guarded the same way, and refused before writing when the schema rejects it.
    const before = (await kv.range(pfx, { prefix: true })).revision;
    const invalid = await w.set({ host: 'a', port: -1 });
    expect(invalid.isErr() && invalid.error).toMatchObject({ reason: 'invalid' });
    expect(invalid.isErr() && invalid.error.reason === 'invalid' && invalid.error.issues[0]?.path).toEqual([
      'port',
    ]);
    expect((await kv.range(pfx, { prefix: true })).revision).toBe(before);
    const ok = await w.set({ host: 'b', port: 82 });
    expect(ok.isOk()).toBe(true);
    await waitFor(() => w.current.host === 'b', 4000, 'the set config');
    // A stale guard loses: someone wrote after the watcher's revision.
    await kv.put(`${pfx}port`, '83');
    const stale = await setConfig(kv, pfx, { host: 'c', port: 84 }, { ifRevision: ok.unwrap().revision });
    expect(stale.isErr() && stale.error.reason).toBe('changed');
    // setConfig with the schema refuses an invalid config, nothing written.
    const refused = await setConfig(kv, pfx, { host: 7 }, { schema: Server });
    expect(refused.isErr() && refused.error.reason).toBe('invalid');
    expect(toText((await kv.get(`${pfx}port`))!.value)).toBe('83');
  });

  it('config — setConfig guarded by the read revision fails after a concurrent change', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-guard');
    await setConfig(kv, pfx, { host: 'a', port: 80 });
    await using w = await watchConfig(kv, pfx, { schema: Server, debounceMs: 0 });
    const readAt = w.revision;

    await kv.put(`${pfx}port`, '81'); // someone else's write
    const lost = await setConfig(kv, pfx, { host: 'mine', port: 90 }, { ifRevision: readAt });
    expect(lost.isErr() && lost.error).toMatchObject({ ifRevision: readAt, changedKeys: ['port'] });

    // A concurrent delete is a change too (with and without the key list).
    await waitFor(() => w.current.port === 81, 4000, 'the watcher to see port 81');
    const fresh = { ifRevision: w.revision, ifKeys: w.keys };
    await kv.delete(`${pfx}host`);
    expect((await setConfig(kv, pfx, { host: 'x', port: 1 }, fresh)).isErr()).toBe(true);
    expect((await setConfig(kv, pfx, { host: 'x', port: 1 }, { ifRevision: fresh.ifRevision })).isErr()).toBe(
      true,
    );

    // Guarded by the current revision it succeeds, and writes the whole config: extra keys go.
    await kv.put(`${pfx}extra`, '1');
    const now = (await kv.range(pfx, { prefix: true })).revision;
    const won = await setConfig(kv, pfx, { host: 'mine', port: 90 }, { ifRevision: now });
    expect(won.unwrap()).toMatchObject({ put: ['host', 'port'], deleted: ['extra'] });
    const stored = await kv.range(pfx, { prefix: true });
    expect(keys(stored.kvs)).toEqual([`${pfx}host`, `${pfx}port`]);
    await waitFor(() => w.current.host === 'mine', 4000, 'the watcher to see the write');
    expect(w.revision).toBe(won.unwrap().revision);
  });

  it('config — a custom decoder (and encoder) stores plain text values', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-decoder');
    const Plain = z.object({ port: z.coerce.number().int(), debug: z.enum(['true', 'false']) });
    const encode = (v: unknown) => String(v);
    await setConfig(kv, pfx, { port: 8080, debug: 'false' }, { encode });
    expect(toText((await kv.get(`${pfx}port`))!.value)).toBe('8080');
    const seen: string[] = [];
    await using w = await watchConfig(kv, pfx, {
      schema: Plain,
      debounceMs: 0,
      decode: (value, key) => {
        seen.push(key);
        return toText(value);
      },
    });
    expect(w.current).toEqual({ port: 8080, debug: 'false' });
    expect(seen.sort()).toEqual(['debug', 'port']);
    await kv.put(`${pfx}debug`, 'true'); // not JSON: only the custom decoder accepts it
    await waitFor(() => w.current.debug === 'true', 4000, 'the plain-text update');
  });

  it('config — an invalid initial config rejects watchConfig with its issues; start() returns Err', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-initial');
    await kv.put(`${pfx}host`, '"a"'); // port is missing
    const err = await watchConfig(kv, pfx, { schema: Server }).catch((e: unknown) => e);
    expect(ConclaveError.is(err, 'invalid-argument')).toBe(true);
    expect((err as ConclaveError).message).toMatch(/port/);
    expect((err as ConclaveError).details?.['issues']).toHaveLength(1);
    const w = new ConfigWatcher(kv, pfx, { schema: Server });
    const r = await w.start();
    expect(r.isErr() && r.error.issues[0]?.path).toEqual(['port']);
    expect(() => w.current).toThrow(
      expect.objectContaining({ name: 'ConclaveError', code: 'invalid-argument' }),
    );
    await expect(w.start()).rejects.toMatchObject({ name: 'ConclaveError', code: 'invalid-argument' }); // once only
    // An undecodable value is an issue at its key, too.
    await kv.put(`${pfx}port`, '{oops');
    const r2 = await new ConfigWatcher(kv, pfx, { schema: Server }).start();
    expect(r2.isErr() && r2.error.issues.map((i) => i.path)).toEqual([['port']]);
  });

  it('config — a prefix larger than one page is read at one pinned revision', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-pages');
    const n = configPageKeysMax + 150;
    const name = (i: number) => `${pfx}k${String(i).padStart(5, '0')}`;
    let written = 0;
    for (let from = 0; from < n; from += 128) {
      const success = Array.from({ length: Math.min(128, n - from) }, (_, j) => ({
        type: 'put' as const,
        key: name(from + j),
        value: '0',
      }));
      written = (await kv.txn({ compare: [], success, failure: [] })).revision;
    }
    // Writes after the first page was read must not leak into the snapshot.
    const racing = afterFirstRead(kv, async () => {
      await kv.put(name(n - 1), '1');
      await kv.put(`${pfx}zz`, '1');
    });
    await using w = await watchConfig(racing, pfx, { schema: z.record(z.string(), z.literal(0)) });
    const c = collectChanges(w);
    expect(Object.keys(w.current)).toHaveLength(n);
    expect(w.revision).toBe(written);
    // The racing writes then arrive through the watch (and fail the schema).
    await waitFor(() => c.items.some((x) => x.changedKeys.includes('zz')), 4000, 'the racing writes');
    expect(c.items.every((x) => x.type === 'rejected')).toBe(true);
    expect(Object.keys(w.current)).toHaveLength(n);
  });

  it('config — setConfig refuses a write of more than 128 keys in one txn, writing nothing', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-ops');
    const big = Object.fromEntries(Array.from({ length: 129 }, (_, i) => [`k${i}`, i]));
    const err = await setConfig(kv, pfx, big).catch((e: unknown) => e);
    expect(ConclaveError.is(err, 'too-many-ops')).toBe(true);
    expect((err as Error).message).toMatch(/128/);
    expect((await kv.range(pfx, { prefix: true, countOnly: true })).count).toBe(0);
  });

  it('config — a slow iterator gets the latest config instead of an unbounded backlog', async () => {
    const { kv, prefix } = ctx();
    const pfx = prefix('cfg-slow');
    await setConfig(kv, pfx, { host: 'a', port: 1 });
    await using w = await watchConfig(kv, pfx, { schema: Server, debounceMs: 0, changesBufferedMax: 2 });
    const it = w.changes(); // subscribed, but not read yet
    for (let port = 2; port <= 6; port++) {
      await kv.put(`${pfx}port`, String(port));
      await waitFor(() => w.current.port === port, 4000, `port ${port}`);
    }
    await w.close();
    const got: ConfigChange<z.infer<typeof Server>>[] = [];
    for await (const c of it) got.push(c);
    expect(got.length).toBeLessThanOrEqual(2);
    expect(got.some((c) => c.type === 'resync' && c.reason === 'overflow')).toBe(true);
    expect(got.at(-1)!.config).toEqual({ host: 'a', port: 6 });
  });
};
