/**
 * The embedded store's request limits are configurable as etcd's flags are, are checked where a
 * member proposes (so no member logs a refused request), and refuse bad settings.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { LocalKV } from '../../backends/raft/store/local-kv.js';
import type { Op } from '../../src/types.js';

let cluster: EmbeddedCluster | undefined;
afterEach(async () => {
  await cluster?.close();
  cluster = undefined;
});

const puts = (n: number): Op[] =>
  Array.from({ length: n }, (_, i) => ({ type: 'put', key: `k${i}`, value: 'x' }));

describe('raft request limits', () => {
  it('a 50 MiB put is refused request-too-large by default; no member logs it and nothing is written', async () => {
    cluster = await startCluster({ nodes: 3 });
    const kv = cluster.kv;
    const leader = await cluster.waitLeader();
    const lastIndex = leader.raft.log.lastIndex;
    await expect(kv.put('big', new Uint8Array(50 * 1024 * 1024))).rejects.toMatchObject({
      code: 'request-too-large',
      retryable: false,
    });
    expect(await kv.get('big')).toBeUndefined();
    expect(leader.raft.log.lastIndex).toBe(lastIndex);
  });

  it('maxRequestBytes and maxTxnOps are configurable, as --max-request-bytes and --max-txn-ops', async () => {
    cluster = await startCluster({ nodes: 1, maxRequestBytes: 4096, maxTxnOps: 4 });
    expect(cluster.limits).toEqual({ maxRequestBytes: 4096, maxTxnOps: 4 });
    const kv = cluster.kv;
    await kv.put('small', new Uint8Array(3000));
    await expect(kv.put('large', new Uint8Array(5000))).rejects.toMatchObject({ code: 'request-too-large' });
    await kv.txn({ compare: [], success: puts(4), failure: [] });
    await expect(kv.txn({ compare: [], success: puts(5), failure: [] })).rejects.toMatchObject({
      code: 'too-many-ops',
    });
    expect(await kv.get('large')).toBeUndefined();
    expect(await kv.get('k4')).toBeUndefined();
  });

  it('a limit above the default is honoured (the store itself imposes no second, fixed limit)', async () => {
    cluster = await startCluster({ nodes: 1, maxTxnOps: 200, maxRequestBytes: 3 * 1024 * 1024 });
    const t = await cluster.kv.txn({ compare: [], success: puts(200), failure: [] });
    expect(t.succeeded).toBe(true);
    await cluster.kv.put('two-mib', new Uint8Array(2 * 1024 * 1024));
    expect((await cluster.kv.get('two-mib'))?.value.length).toBe(2 * 1024 * 1024);
  });

  it('bad limits are refused invalid-argument', async () => {
    await expect(startCluster({ maxRequestBytes: 0 })).rejects.toMatchObject({ code: 'invalid-argument' });
    await expect(startCluster({ maxTxnOps: 1.5 })).rejects.toMatchObject({ code: 'invalid-argument' });
    expect(() => new LocalKV({ limits: { maxTxnOps: -1 } })).toThrow(
      expect.objectContaining({ code: 'invalid-argument' }),
    );
  });

  it('LocalKV enforces the same limits', async () => {
    const kv = new LocalKV({ limits: { maxRequestBytes: 1024, maxTxnOps: 2 } });
    try {
      await expect(kv.put('a', new Uint8Array(2000))).rejects.toMatchObject({ code: 'request-too-large' });
      await expect(kv.txn({ compare: [], success: puts(3), failure: [] })).rejects.toMatchObject({
        code: 'too-many-ops',
      });
      expect((await kv.range('', { fromKey: true, countOnly: true })).count).toBe(0);
    } finally {
      await kv.close();
    }
  });
});
