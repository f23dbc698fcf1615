/**
 * Loss and resync across the recipes: the session-state policy (a suspended session counts as lost
 * for holders unless `lostOnSuspend: false`), permits lost with their session, and watches whose
 * start revision was compacted.
 */
import { expect, it } from 'vitest';
import { waitDelete } from '../../../recipes/internal/wait.js';
import { Mutex } from '../../../recipes/mutex.js';
import { Semaphore } from '../../../recipes/semaphore.js';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { toBytes } from '../../../src/keys.js';
import type { KV } from '../../../src/kv.js';
import { Session, SessionState } from '../../../src/session.js';
import type { RegisterTests } from '../context.js';
import { overriding, sleep, waitFor } from '../util.js';

export const registerLossTests: RegisterTests = (ctx) => {
  it('session state — a suspended session fires lost for default holders only; lostOnSuspend: false waits for real loss', async (t) => {
    const { prefix, backend } = ctx();
    if (!backend.supports.cutConnection || !backend.proxied) {
      t.skip();
      return;
    }
    const name = prefix('suspend');
    const proxied = await backend.proxied();
    try {
      // A long TTL: the session stays suspended (not lost) for seconds after the cut.
      const s = await Session.create(proxied.kv, { ttlSeconds: Math.max(6, backend.minTtlSeconds + 4) });
      const strict = await new Mutex(s, `${name}strict`).lock();
      const relaxed = await new Mutex(s, `${name}relaxed`, { lostOnSuspend: false }).lock();
      const states: string[] = [];
      const ac = new AbortController();
      const watching = (async () => {
        for await (const st of s.states({ signal: ac.signal })) states.push(st);
      })().catch(() => undefined);
      await proxied.cut();
      await waitFor(() => strict.lost.aborted, 10_000, 'lost of the default holder');
      expect(s.state).toBe(SessionState.Suspended);
      expect(s.lost.aborted).toBe(false);
      expect(relaxed.lost.aborted).toBe(false);
      expect(strict.lost.reason).toMatchObject({ code: 'session-lost' });
      await proxied.restore();
      await waitFor(() => s.state === SessionState.Connected, 10_000, 'the session to reconnect');
      expect(relaxed.lost.aborted).toBe(false);
      ac.abort();
      await watching;
      expect(states.slice(0, 3)).toEqual(['connected', 'suspended', 'connected']);
      await relaxed.unlock();
      await strict.unlock(); // its key is still there on the server: unlock removes it
      await s.close();
    } finally {
      await proxied.close();
    }
  }, 30_000);

  it("semaphore — a holder's lost fires when its lease is revoked and the next waiter gets the permit", async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('sem-loss')}s`;
    const ttlSeconds = backend.minTtlSeconds + 5;
    const a = await Session.create(kv, { ttlSeconds });
    await using b = await Session.create(kv, { ttlSeconds });
    await using c = await Session.create(kv, { ttlSeconds });
    const pa = await new Semaphore(a, name, 2).acquire();
    const pb = await new Semaphore(b, name, 2).acquire();
    let cGot = false;
    const waiting = new Semaphore(c, name, 2).acquire().then((p) => {
      cGot = true;
      return p;
    });
    await sleep(100);
    expect(cGot).toBe(false);
    await kv.lease.revoke(a.lease);
    const pc = await waiting;
    await waitFor(() => pa.lost.aborted, 5000, "the revoked holder's lost");
    expect(pb.lost.aborted).toBe(false);
    expect(pc.token).toBeGreaterThan(pb.token);
    await pb.release();
    await pc.release();
    await a.close();
  });

  it('recipes — a delete wait covers the revisions between its start and its watch (deleted, re-created, still there)', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('gap-wait');
    const ac = new AbortController();
    // Deleted after the start revision, before the wait began: found by the gap read, not missed.
    const a = await kv.put(`${p}a`, 'x');
    const aDel = await kv.delete(`${p}a`);
    expect(await waitDelete(kv, toBytes(`${p}a`), a.revision + 1, ac.signal)).toBeGreaterThanOrEqual(
      aDel.revision,
    );
    // Deleted and re-created: another generation counts as deleted when the create revision is given.
    const b = await kv.put(`${p}b`, 'x');
    await kv.delete(`${p}b`);
    const b2 = await kv.put(`${p}b`, 'again');
    expect(
      await waitDelete(kv, toBytes(`${p}b`), b.revision + 1, ac.signal, b.revision),
    ).toBeGreaterThanOrEqual(b2.revision);
    // Present, with later writes in between (the watch registers after the start): waits for the delete.
    const c = await kv.put(`${p}c`, 'x');
    await kv.put(`${p}other`, '1');
    await expectWaitsForDelete(
      kv,
      `${p}c`,
      waitDelete(kv, toBytes(`${p}c`), c.revision + 1, ac.signal, c.revision),
    );
  });

  it('recipes — a gap read failing with a retryable error (member unreachable) is retried; the wait still sees the delete', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('gap-retry');
    let failures = 2;
    // The first two single-key reads fail as a cut connection would; the watch itself is fine.
    const flaky = overriding(kv, {
      range: (real, key, opts) => {
        if (failures === 0) return real.range(key, opts);
        failures--;
        return Promise.reject(new ConclaveError(ErrorCode.Unavailable, 'range: member unreachable (test)'));
      },
    });
    const a = await kv.put(`${p}a`, 'x');
    const aDel = await kv.delete(`${p}a`);
    const ac = new AbortController();
    expect(await waitDelete(flaky, toBytes(`${p}a`), a.revision + 1, ac.signal)).toBeGreaterThanOrEqual(
      aDel.revision,
    );
    expect(failures).toBe(0);
    // A non-retryable failure is not retried: it ends the wait.
    const b = await kv.put(`${p}b`, 'x');
    await kv.put(`${p}other`, '1');
    failures = 0;
    const broken = overriding(kv, {
      range: () => Promise.reject(new ConclaveError(ErrorCode.PermissionDenied, 'range: denied (test)')),
    });
    await expect(waitDelete(broken, toBytes(`${p}b`), b.revision + 1, ac.signal)).rejects.toMatchObject({
      code: 'permission-denied',
    });
  });

  it('recipes — a wait whose start revision was compacted reads the present and still sees the delete', async () => {
    const { kv, prefix } = ctx();
    const p = prefix('compacted-wait');
    const held = await kv.put(`${p}held`, 'x');
    await kv.put(`${p}gone`, 'x');
    await kv.delete(`${p}gone`);
    const later = await kv.put(`${p}other`, 'y');
    await kv.compact(later.revision);
    const ac = new AbortController();
    // Deleted before the compaction: the history is gone, the present says absent.
    const gone = await waitDelete(kv, toBytes(`${p}gone`), held.revision + 1, ac.signal);
    expect(gone).toBeGreaterThanOrEqual(later.revision);
    // Still present: waits for the delete that comes after the compaction.
    await expectWaitsForDelete(
      kv,
      `${p}held`,
      waitDelete(kv, toBytes(`${p}held`), held.revision + 1, ac.signal),
    );
  });

  it("mutex — after a compaction, a second lock() of the holder's session fails conflict and the holder's lost still works", async () => {
    const { kv, prefix, backend } = ctx();
    const name = `${prefix('mutex-reentrant')}lock`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const first = await new Mutex(s, name).lock();
    const r = await kv.put(`${name}-noise`, 'n');
    await kv.compact(r.revision);
    // Not re-entrant: the same session is refused, and the key stays the first handle's.
    await expect(new Mutex(s, name).lock()).rejects.toSatisfy((e) => ConclaveError.is(e, ErrorCode.Conflict));
    expect((await kv.get(first.key))?.createRevision).toBe(first.token);
    await sleep(150);
    expect(first.lost.aborted).toBe(false);
    await kv.delete(first.key); // someone removes the key: the holder must learn it
    await waitFor(() => first.lost.aborted, 5000, 'lost after the delete');
  });
};

/** `waiting` (a delete wait on `key`) is still pending 150 ms on, then resolves with the revision of the delete made next. */
async function expectWaitsForDelete(kv: KV, key: string, waiting: Promise<number>): Promise<void> {
  let done = false;
  const settled = waiting.then((r) => {
    done = true;
    return r;
  });
  await sleep(150);
  expect(done).toBe(false);
  const del = await kv.delete(key);
  expect(await settled).toBe(del.revision);
}
