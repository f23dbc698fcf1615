/**
 * The embedded Raft backend on durable storage: data survives stopping and reopening the
 * whole cluster, a member restarted after the log it missed was compacted catches up by snapshot,
 * `connect('embedded:?dir=')` is durable, and a data directory serves one process at a time.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { EmbeddedKV, startCluster } from '../../backends/raft/embedded.js';
import { toText } from '../../src/keys.js';

const root = mkdtempSync(join(tmpdir(), 'conclave-durable-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const fresh = () => join(root, `c${n++}`);
const small = { segmentBytes: 16 * 1024, snapshotEntries: 50, log: () => undefined };

describe('durable embedded cluster', () => {
  it('durable — a 3-member cluster stopped and reopened has every acknowledged write and the same revision', async () => {
    const dataDir = fresh();
    const c = await startCluster({ nodes: 3, dataDir, ...small });
    const kv = new EmbeddedKV(c);
    const lease = await kv.lease.grant(600);
    for (let i = 0; i < 120; i++) await kv.put(`d/k${i}`, `v${i}`);
    await kv.put('d/leased', 'x', { lease: lease.id });
    await kv.delete('d/k0');
    const before = await kv.range('d/', { prefix: true });
    await c.close();
    // Snapshots were taken and WAL segments released on the way.
    const m1 = join(dataDir, 'member-1');
    expect(readdirSync(join(m1, 'snap')).filter((f) => f.endsWith('.snap')).length).toBeGreaterThan(0);

    const again = await startCluster({ nodes: 3, dataDir, ...small });
    try {
      const kv2 = new EmbeddedKV(again);
      const after = await kv2.range('d/', { prefix: true });
      expect(after.revision).toBe(before.revision);
      expect(after.kvs.map((x) => `${toText(x.key)}=${toText(x.value)}@${x.modRevision}`)).toEqual(
        before.kvs.map((x) => `${toText(x.key)}=${toText(x.value)}@${x.modRevision}`),
      );
      // The lease came back with its keys; history since compaction is still watchable.
      const ttl = await kv2.lease.timeToLive(lease.id, { keys: true });
      expect(ttl.keys.map(toText)).toEqual(['d/leased']);
      const w = kv2.watch('d/k5', { startRevision: 1 });
      const it0 = w[Symbol.asyncIterator]();
      const first = await it0.next();
      expect(first.value!.events[0]!.type).toBe('put');
      await w.close();
      await kv2.put('d/after', 'restart');
      expect((await kv2.range('d/after')).revision).toBe(before.revision + 1);
    } finally {
      await again.close();
    }
  }, 30_000);

  it('durable — a member that missed compacted log catches up from a snapshot', async () => {
    const dataDir = fresh();
    const c = await startCluster({ nodes: 3, dataDir, ...small });
    try {
      const kv = new EmbeddedKV(c);
      await kv.put('s/first', '1');
      const leader = await c.waitLeader();
      const follower = [...c.members.values()].find((m) => m !== leader)!;
      await c.kill(follower.id);
      for (let i = 0; i < 200; i++) await kv.put(`s/k${i % 20}`, `v${i}`);
      const target = (await kv.status()).revision;
      const back = (await c.restart(follower.id))!;
      const until = Date.now() + 10_000;
      while (back.store.revision < target && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
      expect(back.store.revision).toBe(target);
      expect(toText(back.store.range('s/k19').kvs[0]!.value)).toBe('v199');
      // It installed a snapshot: its log starts after the first entries.
      expect(back.storage.firstIndex()).toBeGreaterThan(2);
    } finally {
      await c.close();
    }
  }, 30_000);

  it('durable — connect("embedded:?dir=…") keeps data across close and reopen; a second opener is refused', async () => {
    const dir = fresh();
    const kv = await connect(`embedded:?dir=${encodeURIComponent(dir)}`);
    await kv.put('u/a', '1');
    const rev = (await kv.put('u/b', '2')).revision;
    await expect(connect(`embedded:?dir=${encodeURIComponent(dir)}`)).rejects.toThrow(/in use/);
    await kv.close();
    const kv2 = await connect(`embedded:?dir=${encodeURIComponent(dir)}`);
    try {
      const r = await kv2.range('u/', { prefix: true });
      expect(r.kvs.map((x) => toText(x.value))).toEqual(['1', '2']);
      expect(r.revision).toBe(rev);
    } finally {
      await kv2.close();
    }
  }, 20_000);
});
