import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { type EtcdCluster, etcdBinary, freePort, startEtcd } from '../harness/etcd.js';
import { startProxy } from '../harness/proxy.js';

const available = !!process.env.ETCD_ENDPOINTS || !!etcdBinary() || process.env.REQUIRE_ETCD === '1';

describe.skipIf(!available)('etcd client — failover and error mapping', () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    const c = await startEtcd({ members: 1 });
    if (!c) throw new Error('etcd is required');
    cluster = c;
  });
  afterAll(async () => cluster?.stop());

  it('a call fails over from a dead endpoint to a live one', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    await using kv = await connect({ backend: 'etcd', endpoints: [dead, cluster.endpoints[0]!] });
    const r = await kv.put('failover/k', 'v');
    expect(r.revision).toBeGreaterThan(1);
    expect(new TextDecoder().decode((await kv.get('failover/k'))!.value)).toBe('v');
  });

  it('with every endpoint dead connect() rejects unavailable; with lazy, a read fails as retryable unavailable', async () => {
    const dead = `127.0.0.1:${await freePort()}`;
    await expect(connect({ backend: 'etcd', endpoints: [dead], dialTimeoutMs: 500 })).rejects.toMatchObject({
      code: 'unavailable',
      message: expect.stringContaining(dead),
    });
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [dead],
      callTimeoutMs: 2000,
      lazy: true,
    });
    await expect(kv.get('x')).rejects.toMatchObject({ code: 'unavailable', retryable: true });
  });

  it('a write cut off after it was sent is reported as indeterminate, never retried blindly', async () => {
    const proxy = await startProxy(cluster.endpoints[0]!);
    await using kv = await connect({ backend: 'etcd', endpoints: [proxy.endpoint], callTimeoutMs: 3000 });
    await kv.put('indet/warm', 'x');
    // Cut the connection while a slow txn (many ops) is in flight.
    const ops = Array.from({ length: 100 }, (_, i) => ({
      type: 'put' as const,
      key: `indet/${i}`,
      value: 'x'.repeat(1000),
    }));
    const p = kv.txn({ compare: [], success: ops, failure: [] });
    await proxy.cut();
    const outcome = await p.then(
      () => 'applied',
      (e: { code?: string; retryable?: boolean }) => `${e.code}/${e.retryable}`,
    );
    // Either the reply made it before the cut, or the outcome is unknown and not retryable.
    expect(['applied', 'indeterminate/false']).toContain(outcome);
    await proxy.close();
  });

  it('an abort cancels an in-flight call with the signal reason', async () => {
    await using kv = await connect({ backend: 'etcd', endpoints: cluster.endpoints });
    const w = kv.watch('abort/x');
    await w.ready;
    const ac = new AbortController();
    const reason = new Error('caller gave up');
    const p = kv.get('abort/x', { signal: ac.signal });
    ac.abort(reason);
    await expect(p).rejects.toBe(reason);
    await w.close();
  });
});
