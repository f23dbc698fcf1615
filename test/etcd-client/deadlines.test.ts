/**
 * Every call has a deadline and connect() has a dial timeout. Peers: a listener that accepts TCP
 * and stays silent, a refused port, and a gRPC server speaking etcd's API that never answers (or
 * refuses a stream's token). Bounds are generous (a loaded machine) but far below "forever".
 */
import * as grpc from '@grpc/grpc-js';
import { afterEach, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { Session } from '../../src/session.js';
import { refusedEndpoint, type SilentListener, silentListener } from '../harness/hostile.js';
import { type HostileEtcd, hostileEtcd } from '../harness/hostile-grpc.js';

const settle = (p: Promise<unknown>) =>
  p.then(
    (v) => ({ ok: true as const, v }),
    (e: unknown) => ({ ok: false as const, e: e as Error & { code?: string; retryable?: boolean } }),
  );

async function timed<T>(p: Promise<T>): Promise<{ r: T; ms: number }> {
  const t0 = Date.now();
  const r = await p;
  return { r, ms: Date.now() - t0 };
}

describe('etcd client — dial timeout and call deadlines against dead and silent endpoints', () => {
  let silent: SilentListener | undefined;
  let hostile: HostileEtcd | undefined;
  afterEach(async () => {
    await silent?.close();
    await hostile?.close();
    silent = undefined;
    hostile = undefined;
  });

  it('connect() rejects unavailable within dialTimeoutMs, naming each endpoint and why', async () => {
    silent = await silentListener();
    const refused = await refusedEndpoint();
    const { r, ms } = await timed(
      settle(connect({ backend: 'etcd', endpoints: [silent.endpoint, refused], dialTimeoutMs: 1000 })),
    );
    expect(r.ok).toBe(false);
    if (r.ok) return;
    expect(r.e).toMatchObject({ name: 'ConclaveError', code: 'unavailable' });
    expect(r.e.message).toContain(silent.endpoint);
    expect(r.e.message).toContain(refused);
    expect(r.e.message).toMatch(/ECONNREFUSED|refused/i);
    expect(r.e.message).not.toMatch(/Resolution note: *[)(;]|Resolution note: *$/);
    expect(ms).toBeLessThan(8000);
    expect(silent.accepted()).toBeGreaterThan(0);
  });

  it('a call to a silent endpoint fails unavailable and retryable (never sent), not indeterminate, each within its deadline', async () => {
    silent = await silentListener();
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [silent.endpoint],
      lazy: true,
      callTimeoutMs: 800,
    });
    for (const call of [() => kv.put('k', 'v'), () => kv.get('k'), () => kv.put('k2', 'v')]) {
      const { r, ms } = await timed(settle(call()));
      expect(r.ok).toBe(false);
      if (r.ok) return;
      expect(r.e).toMatchObject({ name: 'ConclaveError', code: 'unavailable', retryable: true });
      expect(r.e.message).toMatch(/never sent/);
      expect(ms).toBeLessThan(6000);
    }
  });

  it('a call to a refused port fails unavailable, retryable, within its deadline', async () => {
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [await refusedEndpoint()],
      lazy: true,
      callTimeoutMs: 1000,
    });
    const { r, ms } = await timed(settle(kv.put('k', 'v')));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.e).toMatchObject({ code: 'unavailable', retryable: true });
    expect(ms).toBeLessThan(6000);
  });

  it('a watch create that is never answered fails, the stream is re-opened and later creates are not blocked', async () => {
    let streams = 0;
    hostile = await hostileEtcd({
      bidi: {
        watch: (call) => {
          const n = ++streams;
          let nextId = 0;
          call.on('data', (req: { createRequest?: unknown }) => {
            // The first stream swallows every create; later streams answer them.
            if (n === 1 || !req.createRequest) return;
            call.write({ header: { revision: 10 }, watchId: nextId++, created: true });
          });
        },
      },
    });
    await using kv = await connect({ backend: 'etcd', endpoints: [hostile.endpoint], callTimeoutMs: 1500 });
    const stuck = kv.watch('a');
    const behind = kv.watch('b');
    const { r, ms } = await timed(settle(stuck.ready));
    expect(r.ok).toBe(false);
    if (!r.ok)
      expect(r.e).toMatchObject({ name: 'ConclaveError', code: 'deadline-exceeded', retryable: true });
    expect(ms).toBeLessThan(8000);
    await expect(behind.ready).resolves.toBe(10);
    expect(streams).toBe(2);
    await behind.close();
  });

  it('keepAliveOnce and Session.create({ lease }) fail within the deadline against a server that never answers', async () => {
    hostile = await hostileEtcd({ bidi: { leaseKeepAlive: () => undefined } });
    await using kv = await connect({ backend: 'etcd', endpoints: [hostile.endpoint], callTimeoutMs: 800 });
    const ka = await timed(settle(kv.lease.keepAliveOnce(0x1234n)));
    expect(ka.r.ok).toBe(false);
    if (!ka.r.ok) expect(ka.r.e).toMatchObject({ code: 'deadline-exceeded', retryable: true });
    expect(ka.ms).toBeLessThan(6000);
    const s = await timed(settle(Session.create(kv, { lease: 0x1234n })));
    expect(s.r.ok).toBe(false);
    if (!s.r.ok) expect(s.r.e).toMatchObject({ name: 'ConclaveError' });
    expect(s.ms).toBeLessThan(6000);
  });

  it('the keep-alive stream refused for a stale token re-opens with a fresh token', async () => {
    let authenticates = 0;
    let streams = 0;
    hostile = await hostileEtcd({
      unary: { authenticate: () => ({ token: `token-${++authenticates}` }) },
      bidi: {
        leaseKeepAlive: (call) => {
          streams++;
          const token = call.metadata.get('token')[0];
          call.on('data', (req: { ID?: unknown }) => {
            if (token === 'token-1') {
              call.emit('error', {
                code: grpc.status.UNAUTHENTICATED,
                details: 'etcdserver: invalid auth token',
              });
              return;
            }
            call.write({ ID: req.ID, TTL: 7 });
          });
        },
      },
    });
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [hostile.endpoint],
      auth: { username: 'u', password: 'p' },
      callTimeoutMs: 2000,
    });
    const first = await settle(kv.lease.keepAliveOnce(5n));
    expect(first.ok).toBe(false);
    const second = await kv.lease.keepAliveOnce(5n);
    expect(second.ttlSeconds).toBe(7);
    const keepAliveTokens = hostile.calls.filter((c) => c.method === 'leaseKeepAlive').map((c) => c.token);
    expect(keepAliveTokens).toEqual(['token-1', 'token-2']);
    expect(streams).toBe(2);
  });
});
