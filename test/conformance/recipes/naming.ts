import { spawn } from 'node:child_process';
import { expect, it } from 'vitest';
import {
  resolveService,
  type ServiceChange,
  ServiceRegistry,
  type ServiceResolver,
  type SessionProvider,
} from '../../../recipes/naming.js';
import { toText } from '../../../src/keys.js';
import { Session } from '../../../src/session.js';
import type { RegisterTests } from '../context.js';
import { afterFirstRead, mortal, waitFor } from '../util.js';

/** Collects a resolver's changes in the background until it closes. */
function collectChanges(r: ServiceResolver): { items: ServiceChange[]; done: Promise<unknown> } {
  const items: ServiceChange[] = [];
  const it = r.changes();
  const done = (async () => {
    for await (const c of it) items.push(c);
  })().catch((err: unknown) => err);
  return { items, done };
}

const ids = (r: ServiceResolver) => r.instances.map((i) => i.id);

/** `etcdctl get --prefix` output (key and value lines). */
function etcdctlGetPrefix(endpoints: string[], prefix: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let out = '';
    const child = spawn('etcdctl', ['--endpoints', endpoints.join(','), 'get', '--prefix', prefix], {
      env: { ...process.env, ETCDCTL_API: '3' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('exit', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`etcdctl exited ${code}: ${out}`)),
    );
  });
}

/** Conformance tests of ServiceRegistry and ServiceResolver; run on every backend. */
export const registerNamingTests: RegisterTests = (ctx) => {
  it("naming — a registration is stored as etcd's naming JSON under service/id, bound to the session's lease", async (t) => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-format')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    const a = await registry.register(s, service, {
      id: 'a',
      addr: '10.0.0.1:50051',
      metadata: { zone: 'eu-1', weight: 2 },
    });
    const b = await registry.register(s, service, { id: 'b', addr: '10.0.0.2:50051' });
    expect(a.state).toBe('registered');
    expect(a.key).toBe(`${service}/a`);
    const raw = await kv.get(`${service}/a`);
    expect(raw?.lease).toBe(s.lease);
    expect(toText(raw!.value)).toBe('{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"zone":"eu-1","weight":2}}');
    expect(JSON.parse(toText(raw!.value))).toEqual({
      Op: 0,
      Addr: '10.0.0.1:50051',
      Metadata: { zone: 'eu-1', weight: 2 },
    });
    // Go's encoding/json writes a nil Metadata as null; Go's resolver reads it back as nil.
    expect(toText((await kv.get(`${service}/b`))!.value)).toBe(
      '{"Op":0,"Addr":"10.0.0.2:50051","Metadata":null}',
    );

    if (backend.supports.etcdctl && backend.endpoints) {
      const out = await etcdctlGetPrefix(backend.endpoints(), `${service}/`);
      expect(out.trim().split('\n')).toEqual([
        `${service}/a`,
        '{"Op":0,"Addr":"10.0.0.1:50051","Metadata":{"zone":"eu-1","weight":2}}',
        `${service}/b`,
        '{"Op":0,"Addr":"10.0.0.2:50051","Metadata":null}',
      ]);
    } else {
      t.annotate('etcdctl check skipped: this backend does not support etcdctl');
    }

    await a.release(); // = close()
    await a.close(); // idempotent
    expect(a.state).toBe('closed');
    expect(await kv.get(`${service}/a`)).toBeUndefined();
    expect(registry.size).toBe(1);
    await registry.close();
    expect(b.state).toBe('closed');
    expect((await kv.range(`${service}/`, { prefix: true, countOnly: true })).count).toBe(0);
  }, 30_000);

  it('naming — a resolver reads the instances at one revision and reports added, updated and removed ones', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-changes')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    await registry.register(s, service, { id: 'a', addr: 'a:1' });
    // A value that is not a naming.Update is skipped, as Go's resolver does.
    await kv.put(`${service}/junk`, 'not json');
    await using r = await resolveService(kv, service);
    expect(ids(r)).toEqual(['a']);
    expect(r.skippedKeys).toEqual([`${service}/junk`]);
    const c = collectChanges(r);
    const b = await registry.register(s, service, { id: 'b', addr: 'b:1', metadata: { v: 1 } });
    await waitFor(() => c.items.length === 1, 10_000, 'the added instance');
    b.update({ addr: 'b:2', metadata: { v: 2 } });
    await waitFor(() => c.items.length === 2, 10_000, 'the updated instance');
    await b.close();
    await waitFor(() => c.items.length === 3, 10_000, 'the removed instance');
    await r.close();
    expect(await c.done).toBeUndefined();
    const [added, updated, removed] = c.items;
    expect(added!.added.map((i) => [i.id, i.addr, i.metadata])).toEqual([['b', 'b:1', { v: 1 }]]);
    expect(added!.instances.map((i) => i.id)).toEqual(['a', 'b']);
    expect(updated!.updated.map((i) => [i.id, i.addr, i.metadata])).toEqual([['b', 'b:2', { v: 2 }]]);
    expect(updated!.added).toEqual([]);
    expect(removed!.removed.map((i) => i.id)).toEqual(['b']);
    expect(removed!.instances.map((i) => i.id)).toEqual(['a']);
    expect(c.items.every((x) => x.resync === undefined)).toBe(true);
    expect(r.revision).toBe(removed!.revision);
  }, 30_000);

  it('naming — an instance whose process dies (no deregistration) disappears from a resolver within its TTL', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-death')}svc`;
    const ttlSeconds = backend.minTtlSeconds;
    const doomedKv = mortal(kv);
    const doomed = await Session.create(doomedKv.kv, { ttlSeconds });
    await using other = await Session.create(kv, { ttlSeconds: ttlSeconds + 5 });
    const registry = new ServiceRegistry();
    await registry.register(doomed, service, { id: 'doomed', addr: 'd:1' });
    await using registry2 = new ServiceRegistry();
    await registry2.register(other, service, { id: 'alive', addr: 'a:1' });
    await using r = await resolveService(kv, service);
    expect(ids(r)).toEqual(['alive', 'doomed']);
    // The process "dies": its client goes away without revoking the lease or deleting the key.
    const diedAt = Date.now();
    doomedKv.die();
    await waitFor(() => !ids(r).includes('doomed'), (ttlSeconds + 10) * 1000, 'the dead instance to vanish');
    // Lease expiry is checked periodically by the server: allow a little past the TTL.
    // The last keep-alive was at most TTL/3 before the death, so the lease outlives it by 2/3 TTL.
    const goneAfterMs = Date.now() - diedAt;
    expect(goneAfterMs).toBeLessThan(ttlSeconds * 1000 + 3000);
    expect(goneAfterMs).toBeGreaterThan((ttlSeconds * 1000) / 2);
    expect(ids(r)).toEqual(['alive']);
    await registry[Symbol.asyncDispose]();
    await doomed[Symbol.asyncDispose]();
  }, 40_000);

  it('naming — round-robin cycles every instance, random covers all, sticky keeps a key on its instance', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-pick')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    const regs = [];
    for (const id of ['i0', 'i1', 'i2', 'i3'])
      regs.push(await registry.register(s, service, { id, addr: `${id}:1` }));
    await using r = await resolveService(kv, service);
    expect(r.pick({ strategy: 'round-robin' })).toBeDefined();
    // Round-robin: any 4 consecutive picks are the 4 instances, and the cycle repeats.
    const rr = Array.from({ length: 12 }, () => r.pick()!.id);
    for (let k = 0; k < 12; k += 4) expect(new Set(rr.slice(k, k + 4)).size).toBe(4);
    expect(rr.slice(4, 8)).toEqual(rr.slice(0, 4));
    // Random: 200 picks reach every instance (a miss has probability about 4 * 0.75^200).
    const seen = new Set(Array.from({ length: 200 }, () => r.pick({ strategy: 'random' })!.id));
    expect([...seen].sort()).toEqual(['i0', 'i1', 'i2', 'i3']);
    // Sticky: the same key always lands on the same instance; keys spread over instances.
    const sticky = (key: string) => r.pick({ strategy: 'sticky', key })!.id;
    const home = sticky('user-42');
    expect(Array.from({ length: 20 }, () => sticky('user-42'))).toEqual(Array(20).fill(home));
    const spread = new Set(Array.from({ length: 64 }, (_, k) => sticky(`user-${k}`)));
    expect(spread.size).toBeGreaterThan(1);
    expect(() => r.pick({ strategy: 'sticky' })).toThrow(
      expect.objectContaining({ name: 'ConclaveError', code: 'invalid-argument' }),
    );
    // Removing another instance leaves the key where it was; removing its instance moves it.
    const before = new Map(Array.from({ length: 64 }, (_, k) => [`user-${k}`, sticky(`user-${k}`)]));
    const other = regs.find((x) => x.id !== home)!;
    await other.close();
    await waitFor(() => r.instances.length === 3, 10_000, 'the removal');
    for (const [key, id] of before) if (id !== other.id) expect(sticky(key)).toBe(id);
    await regs.find((x) => x.id === home)!.close();
    await waitFor(() => r.instances.length === 2, 10_000, 'the second removal');
    expect(sticky('user-42')).not.toBe(home);
    expect([home, other.id]).not.toContain(sticky('user-42'));
  }, 30_000);

  it('naming — errors mark an instance down for a while; pick skips it unless every instance is down', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-down')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    await registry.register(s, service, { id: 'a', addr: 'a:1' });
    await registry.register(s, service, { id: 'b', addr: 'b:1' });
    let now = 1_000_000;
    await using r = await resolveService(kv, service, {
      errorThreshold: 3,
      errorWindowMs: 1000,
      downMs: 5000,
      now: () => now,
    });
    // Errors spread wider than the window do not mark it down.
    expect(r.reportError('a')).toBe(false);
    now += 800;
    expect(r.reportError('a')).toBe(false);
    now += 800;
    expect(r.reportError('a')).toBe(false);
    expect(r.isDown('a')).toBe(false);
    // Three within the window do.
    now += 10;
    expect(r.reportError('a')).toBe(true);
    expect(r.isDown('a')).toBe(true);
    expect(new Set(Array.from({ length: 10 }, () => r.pick()!.id))).toEqual(new Set(['b']));
    expect(r.pick({ strategy: 'sticky', key: 'k' })!.id).toBe('b');
    // Every instance down: pick fails open and uses all of them.
    for (let k = 0; k < 3; k++) r.reportError('b');
    expect(r.isDown('b')).toBe(true);
    expect(new Set(Array.from({ length: 10 }, () => r.pick()!.id))).toEqual(new Set(['a', 'b']));
    // A success clears b; after downMs, a is back too.
    r.reportSuccess('b');
    expect(new Set(Array.from({ length: 10 }, () => r.pick()!.id))).toEqual(new Set(['b']));
    now += 5001;
    expect(r.isDown('a')).toBe(false);
    expect(new Set(Array.from({ length: 10 }, () => r.pick()!.id))).toEqual(new Set(['a', 'b']));
    expect(r.reportError('nobody')).toBe(false); // unknown ids are ignored
  }, 30_000);

  it('naming — a failing health check withdraws the endpoint and a passing one restores it', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-health')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    let healthy = true;
    let hang = false;
    const states: string[] = [];
    const reg = await registry.register(s, service, {
      id: 'h',
      addr: 'h:1',
      healthCheck: {
        intervalMs: 50,
        timeoutMs: 200,
        check: ({ signal }) =>
          hang
            ? new Promise((_, reject) => signal.addEventListener('abort', () => reject(signal.reason)))
            : healthy,
      },
    });
    reg.onStateChange((st) => states.push(st));
    await using r = await resolveService(kv, service);
    expect(ids(r)).toEqual(['h']);
    healthy = false;
    // The watch may deliver the delete before the registration has its reply: wait for both.
    await waitFor(() => ids(r).length === 0 && reg.state === 'withdrawn', 10_000, 'the withdrawal');
    expect(await kv.get(`${service}/h`)).toBeUndefined();
    healthy = true;
    await waitFor(() => ids(r).length === 1 && reg.state === 'registered', 10_000, 'the restoration');
    expect((await kv.get(`${service}/h`))?.lease).toBe(s.lease);
    // A check that hangs past its timeout counts as failed.
    hang = true;
    await waitFor(
      () => ids(r).length === 0 && reg.state === 'withdrawn',
      10_000,
      'the withdrawal after a timeout',
    );
    hang = false;
    await waitFor(() => reg.state === 'registered' && ids(r).length === 1, 10_000, 'the second restoration');
    expect(states).toEqual(['withdrawn', 'registered', 'withdrawn', 'registered']);
  }, 30_000);

  it('naming — an endpoint whose first health check fails is not written until it passes', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-health0')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    let healthy = false;
    const reg = await registry.register(s, service, {
      id: 'h',
      addr: 'h:1',
      healthCheck: { intervalMs: 50, check: () => healthy },
    });
    expect(reg.state).toBe('withdrawn');
    expect(await kv.get(`${service}/h`)).toBeUndefined();
    healthy = true;
    await waitFor(async () => (await kv.get(`${service}/h`)) !== undefined, 10_000, 'the first write');
    await waitFor(() => reg.state === 'registered', 10_000, 'the registered state');
  }, 30_000);

  it("naming — an aborted register rejects with the signal's reason and writes nothing", async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-abort')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    const ac = new AbortController();
    const reason = new Error('shutting down');
    // The first health check hangs; the abort arrives while it runs.
    const pending = registry.register(s, service, {
      id: 'x',
      addr: 'x:1',
      healthCheck: { timeoutMs: 60_000, check: () => new Promise(() => {}) },
      signal: ac.signal,
    });
    setTimeout(() => ac.abort(reason), 50);
    await expect(pending).rejects.toBe(reason);
    expect(registry.size).toBe(0);
    await expect(
      registry.register(s, service, { id: 'y', addr: 'y:1', signal: AbortSignal.abort(reason) }),
    ).rejects.toBe(reason);
    expect((await kv.range(`${service}/`, { prefix: true, countOnly: true })).count).toBe(0);
  }, 30_000);

  it('naming — a registration is written again under the next session after its lease is revoked', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-replace')}svc`;
    const ttlSeconds = backend.minTtlSeconds + 2;
    const sessions: Session[] = [];
    let current: Session | undefined;
    const provider: SessionProvider = async ({ signal }) => {
      if (!current || current.lost.aborted) {
        current = await Session.create(kv, { ttlSeconds, signal });
        sessions.push(current);
      }
      return current;
    };
    try {
      await using registry = new ServiceRegistry();
      const reg = await registry.register(provider, service, { id: 'x', addr: 'x:1' });
      await using r = await resolveService(kv, service);
      const c = collectChanges(r);
      const first = sessions[0]!;
      expect(r.instances[0]?.lease).toBe(first.lease);
      // Someone revokes the lease: the key goes at once, then comes back under a new lease.
      await kv.lease.revoke(first.lease);
      await waitFor(
        // The watch may deliver the put before the registration has its reply: wait for both.
        () =>
          sessions.length === 2 && r.instances[0]?.lease === sessions[1]!.lease && reg.state === 'registered',
        20_000,
        're-registration',
      );
      expect(reg.state).toBe('registered');
      expect(reg.session).toBe(sessions[1]);
      expect(c.items[0]!.removed.map((i) => i.id)).toEqual(['x']);
      expect(c.items.at(-1)!.instances.map((i) => [i.id, i.addr])).toEqual([['x', 'x:1']]);

      // Without a provider, a lost session leaves the registration lost until setSession().
      await using plain = await Session.create(kv, { ttlSeconds });
      const reg2 = await registry.register(plain, service, { id: 'y', addr: 'y:1' });
      await kv.lease.revoke(plain.lease);
      await waitFor(() => reg2.state === 'lost', 20_000, 'the lost state');
      expect(await kv.get(`${service}/y`)).toBeUndefined();
      await using next = await Session.create(kv, { ttlSeconds });
      reg2.setSession(next);
      await waitFor(() => reg2.state === 'registered', 10_000, 'registration under the new session');
      expect((await kv.get(`${service}/y`))?.lease).toBe(next.lease);
      await waitFor(() => ids(r).includes('y'), 10_000, 'the resolver to see y');
    } finally {
      for (const s of sessions) await s[Symbol.asyncDispose]();
    }
  }, 60_000);

  it('naming — a resolver whose watch history was compacted re-reads and emits a resync with the difference', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-compact')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    const a = await registry.register(s, service, { id: 'a', addr: 'a:1' });
    await registry.register(s, service, { id: 'b', addr: 'b:1' });
    // Between the resolver's read and its watch: a leaves, c arrives, b moves; then compaction.
    const flaky = afterFirstRead(kv, async () => {
      await a.close();
      await registry.register(s, service, { id: 'c', addr: 'c:1' });
      const w = await kv.put(`${service}/b`, '{"Op":0,"Addr":"b:2","Metadata":null}', { lease: s.lease });
      await kv.compact(w.revision);
    });
    await using r = await resolveService(flaky, service);
    const c = collectChanges(r);
    expect(ids(r)).toEqual(['a', 'b']);
    await waitFor(() => c.items.length >= 1, 10_000, 'the resync');
    const resync = c.items[0]!;
    expect(resync.resync).toBe('compacted');
    expect(resync.added.map((i) => i.id)).toEqual(['c']);
    expect(resync.removed.map((i) => i.id)).toEqual(['a']);
    expect(resync.updated.map((i) => [i.id, i.addr])).toEqual([['b', 'b:2']]);
    expect(ids(r)).toEqual(['b', 'c']);
    // The watch resumed after the re-read.
    await registry.register(s, service, { id: 'd', addr: 'd:1' });
    // Wait for the change item itself: the resolver's list is updated before its change stream
    // delivers the item to a consumer, so the list alone can show d a few turns earlier.
    await waitFor(
      () => c.items.some((x) => x.added.some((i) => i.id === 'd')),
      10_000,
      'a change after the resync',
    );
    expect(c.items.at(-1)!.resync).toBeUndefined();
    expect(ids(r)).toEqual(['b', 'c', 'd']);
  }, 30_000);

  it('naming — a resolver cut off while instances change and history is compacted resyncs to the right list', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.cutConnection || !backend.proxied) {
      t.skip();
      return;
    }
    const service = `${prefix('naming-cut')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 10 });
    await using registry = new ServiceRegistry();
    const a = await registry.register(s, service, { id: 'a', addr: 'a:1' });
    const proxied = await backend.proxied();
    try {
      await using r = await resolveService(proxied.kv, service);
      const c = collectChanges(r);
      expect(ids(r)).toEqual(['a']);
      await proxied.cut();
      await a.close();
      await registry.register(s, service, { id: 'b', addr: 'b:1' });
      const rev = (await kv.status()).revision;
      await kv.compact(rev);
      await proxied.restore();
      await waitFor(() => ids(r).join() === 'b', 15_000, 'the list written while cut off');
      const last = c.items.at(-1)!;
      expect(last.resync).toBe('compacted');
      expect(last.instances.map((i) => i.id)).toEqual(['b']);
      await registry.register(s, service, { id: 'c', addr: 'c:1' });
      await waitFor(() => ids(r).join() === 'b,c', 10_000, 'a change after the resync');
    } finally {
      await proxied.close();
    }
  }, 40_000);

  it('naming — a resolver tracks at most instancesMax instances and a slow iterator gets one merged change', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-bounds')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    const regs = [];
    for (const id of ['a', 'b', 'c', 'd'])
      regs.push(await registry.register(s, service, { id, addr: `${id}:1` }));
    await using r = await resolveService(kv, service, { instancesMax: 3, changesBufferedMax: 1 });
    expect(ids(r)).toEqual(['a', 'b', 'c']);
    expect(r.truncated).toBe(true);
    // A slow consumer: it subscribes, then does not read while five changes happen.
    const slow = r.changes();
    await regs[0]!.close(); // room for d: the resolver re-reads and takes it in
    await waitFor(() => ids(r).join() === 'b,c,d', 10_000, 'd to be taken in');
    await regs[1]!.close();
    await waitFor(() => ids(r).join() === 'c,d', 10_000, 'b to leave');
    regs[2]!.update({ addr: 'c:2' });
    await waitFor(() => r.instances[0]?.addr === 'c:2', 10_000, 'c to change');
    const merged = await slow.next();
    expect(merged.value).toMatchObject({ resync: 'overflow' });
    const m = merged.value as ServiceChange;
    expect(m.removed.map((i) => i.id)).toEqual(['a', 'b']);
    expect(m.added.map((i) => i.id)).toEqual(['d']);
    expect(m.updated.map((i) => [i.id, i.addr])).toEqual([['c', 'c:2']]);
    expect(m.instances.map((i) => i.id)).toEqual(['c', 'd']);
    await slow.return();
  }, 30_000);
  it('naming — aborting the signal of changes() ends that iterator normally; the resolver and others go on', async () => {
    const { kv, prefix, backend } = ctx();
    const service = `${prefix('naming-changes-abort')}svc`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    await using registry = new ServiceRegistry();
    await using r = await resolveService(kv, service);
    const ac = new AbortController();
    const seen: string[] = [];
    const stopped = (async () => {
      for await (const c of r.changes({ signal: ac.signal })) seen.push(...c.added.map((i) => i.id));
      return 'ended';
    })().catch((err: unknown) => err);
    const other = collectChanges(r);
    await registry.register(s, service, { id: 'a', addr: 'a:1' });
    await waitFor(() => seen.length === 1, 10_000, 'the first change');
    ac.abort(new Error('stop watching'));
    // A requested stop is not an error: the loop ends without throwing.
    expect(await stopped).toBe('ended');
    await registry.register(s, service, { id: 'b', addr: 'b:1' });
    await waitFor(() => other.items.length === 2, 10_000, 'the other iterator to see b');
    expect(seen).toEqual(['a']);
    expect(ids(r)).toEqual(['a', 'b']);
    // An already aborted signal: an iterator that ends at once, without an error.
    const none: ServiceChange[] = [];
    for await (const c of r.changes({ signal: AbortSignal.abort(new Error('x')) })) none.push(c);
    expect(none).toEqual([]);
    await r.close();
    expect(await other.done).toBeUndefined();
  }, 30_000);
};
