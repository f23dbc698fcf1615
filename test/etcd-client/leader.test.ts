import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';

const available = !!etcdBinary() || process.env.REQUIRE_ETCD === '1';

describe.skipIf(!available)('etcd client — 3 members', () => {
  let cluster: EtcdCluster;
  beforeAll(async () => {
    const c = await startEtcd({ members: 3 });
    if (!c) throw new Error('etcd is required');
    cluster = c;
  }, 30_000);
  afterAll(async () => cluster?.stop());

  it('connects to the Raft leader whatever the endpoint order, so writes skip a forwarding hop', async () => {
    for (const order of [cluster.endpoints, [...cluster.endpoints].reverse()]) {
      await using kv = await connect({ backend: 'etcd', endpoints: order });
      const s = await kv.status();
      expect(s.leader).toBeDefined();
      expect(s.memberId).toBe(s.leader);
    }
  });

  it('keeps working when the member it talks to is stopped (failover to another member)', async () => {
    await using kv = await connect({ backend: 'etcd', endpoints: cluster.endpoints });
    await kv.put('m3/k', 'before');
    const s = await kv.status();
    // Stop the member we talk to (the leader): the others elect a new one and we fail over.
    const idx = await (async () => {
      for (let i = 0; i < cluster.endpoints.length; i++) {
        await using one = await connect({ backend: 'etcd', endpoints: [cluster.endpoints[i]!] });
        if ((await one.status()).memberId === s.memberId) return i;
      }
      return -1;
    })();
    expect(idx).toBeGreaterThanOrEqual(0);
    process.kill(cluster.pids[idx]!, 'SIGKILL');
    const until = Date.now() + 15_000;
    let value: string | undefined;
    while (Date.now() < until) {
      try {
        value = new TextDecoder().decode((await kv.get('m3/k'))!.value);
        break;
      } catch {
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    expect(value).toBe('before');
    const w = await kv.put('m3/k', 'after').catch(async () => kv.put('m3/k', 'after'));
    expect(w.revision).toBeGreaterThan(0);
  }, 30_000);
});
