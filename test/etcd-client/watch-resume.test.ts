/**
 * A watch-overflow's resume point is the first revision not delivered: the batches buffered before
 * the overflow are delivered, then the error; a new watch from `details.resumeRevision` yields
 * exactly the events that were not delivered (nothing lost, nothing twice). On a real etcd.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import type { KV } from '../../src/kv.js';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';

const available = !!process.env.ETCD_ENDPOINTS || !!etcdBinary() || process.env.REQUIRE_ETCD === '1';

describe.skipIf(!available)('etcd client — watch overflow resume point', () => {
  let cluster: EtcdCluster;
  let kv: KV;
  beforeAll(async () => {
    const c = await startEtcd({ members: 1 });
    if (!c) throw new Error('etcd is required');
    cluster = c;
    kv = await connect({ backend: 'etcd', endpoints: cluster.endpoints });
  });
  afterAll(async () => {
    await kv?.close();
    await cluster?.stop();
  });

  for (const [what, opts] of [
    ['batches (bufferBatchesMax)', { bufferBatchesMax: 2 }],
    ['bytes (watchBufferBytesMax)', {}],
  ] as const) {
    it(`resuming from details.resumeRevision after an overflow in ${what} yields exactly the missing events`, async () => {
      await using client = what.startsWith('bytes')
        ? await connect({ backend: 'etcd', endpoints: cluster.endpoints, watchBufferBytesMax: 3000 })
        : await connect({ backend: 'etcd', endpoints: cluster.endpoints });
      const prefix = `resume/${what.slice(0, 5)}/`;
      const w = client.watch(prefix, { prefix: true, ...opts });
      await w.ready;
      const written: number[] = [];
      // One put per response: each is its own batch. 500-byte values: 3000 bytes hold ~4.
      for (let i = 0; i < 12; i++) written.push((await kv.put(`${prefix}${i}`, 'v'.repeat(500))).revision);
      await new Promise((r) => setTimeout(r, 500));

      const delivered: number[] = [];
      let err: (Error & { code?: string; details?: { resumeRevision?: number } }) | undefined;
      try {
        for await (const b of w) for (const e of b.events) delivered.push(e.kv.modRevision);
      } catch (e) {
        err = e as typeof err;
      }
      expect(err).toMatchObject({ code: 'watch-overflow' });
      const resume = err!.details!.resumeRevision!;
      expect(err!.message).toContain(`revision ${resume}`);
      expect(delivered.length).toBeGreaterThan(0);
      expect(delivered.length).toBeLessThan(written.length);
      expect(resume).toBe(delivered[delivered.length - 1]! + 1);

      const rest: number[] = [];
      const again = kv.watch(prefix, { prefix: true, startRevision: resume });
      for await (const b of again) {
        for (const e of b.events) rest.push(e.kv.modRevision);
        if (rest.length > 0 && rest[rest.length - 1]! >= written[written.length - 1]!) break;
      }
      expect([...delivered, ...rest]).toEqual(written);
    });
  }
});
