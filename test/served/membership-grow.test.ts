/**
 * Membership changes under client write load, on real processes with etcdctl 3.4: grow a
 * one-member cluster to three and then five members (each added as a learner, started with
 * `--initial-cluster-state existing`, promoted once caught up), replace a member (remove one, add
 * another), shrink five to three, and move a member to a new peer URL (`etcdctl member update`,
 * then restart it there). A bounded writer puts keys through one member all along; at the end every
 * acknowledged write is on every member, read linearizably through each of them.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { freePort } from '../harness/etcd.js';
import { etcdctl, hasEtcdctl, type ListedMember, listMembers as listAt } from '../harness/etcdctl.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { until as poll } from '../harness/wait.js';

/** The writer's bounds: at most this many puts, for at most this long. */
const writesMax = 20_000;
const writeMsMax = 240_000;

let c: ServedCluster | undefined;

afterAll(async () => {
  await c?.close();
});

const endpoints = (at: readonly number[]): string[] => at.map((i) => c!.members[i]!.endpoint);

/** etcdctl against members `at`; stdout, or throws with stderr. */
function ctl(at: readonly number[], ...args: string[]): string {
  return etcdctl(endpoints(at), args);
}

const until = <T>(what: string, f: () => T | undefined): Promise<T> =>
  poll(what, f, { timeoutMs: 60_000, intervalMs: 250 });

/** Errors worth retrying a membership call on while leadership moves or a learner catches up. */
const transient =
  /no leader|timed out|leader changed|in sync with leader|unhealthy cluster|still being applied|not enough started|context deadline/;

/** `etcdctl member list -w json` as hex IDs with peer URLs and learner flags. */
function listMembers(at: readonly number[]): ListedMember[] {
  return listAt(endpoints(at));
}

describe.skipIf(!hasEtcdctl)('membership under write load', () => {
  it('grow 1 -> 3 -> 5, replace a member, shrink 5 -> 3, move a member to a new peer URL: no acknowledged write lost', async () => {
    c = await startServed({ members: 1, extraArgs: ['--snapshot-count=500'] });
    const cl = c;
    /** Indexes of the members in the cluster now. */
    let inCluster = [0];
    const peerOf = (i: number) => `http://127.0.0.1:${cl.members[i]!.peerPort}`;
    const idOf = (i: number) => {
      const m = listMembers(inCluster).find((x) => x.peer === peerOf(i));
      if (!m) throw new Error(`member ${cl.members[i]!.name} is not listed`);
      return m.id;
    };

    // The writer: sequential puts through m0 (never removed); only acknowledged ones are recorded.
    const kv = await connect({ backend: 'etcd', endpoints: [cl.members[0]!.endpoint], lazy: true });
    const acked = new Map<string, string>();
    let failed = 0;
    let stop = false;
    const writer = (async () => {
      const end = performance.now() + writeMsMax;
      for (let n = 0; n < writesMax && !stop && performance.now() < end; n++) {
        const key = `w/${String(n).padStart(6, '0')}`;
        try {
          await kv.put(key, `v${n}`);
          acked.set(key, `v${n}`);
        } catch {
          failed++;
          await new Promise((r) => setTimeout(r, 50));
        }
        await new Promise((r) => setTimeout(r, 5));
      }
    })();

    const add = async (name: string): Promise<void> => {
      const i = await cl.addMember(name);
      await until(`member add ${name}`, () => {
        try {
          return ctl(inCluster, 'member', 'add', name, '--learner', `--peer-urls=${peerOf(i)}`);
        } catch (err) {
          if (/Peer URLs already exists/.test(String(err))) return 'added';
          if (transient.test(String(err))) return undefined;
          throw err;
        }
      });
      await cl.startExisting(i, [...inCluster, i]);
      const id = idOf(i);
      await until(`member promote ${name}`, () => {
        try {
          return ctl(inCluster, 'member', 'promote', id);
        } catch (err) {
          if (/can only promote a learner member$/m.test(String(err))) return 'promoted';
          if (transient.test(String(err))) return undefined;
          throw err;
        }
      });
      inCluster = [...inCluster, i];
    };

    const remove = async (i: number): Promise<void> => {
      const id = idOf(i);
      const exited = new Promise<number | null>((resolve) => cl.members[i]!.proc!.once('exit', resolve));
      const rest = inCluster.filter((j) => j !== i);
      await until(`member remove ${cl.members[i]!.name}`, () => {
        try {
          return ctl(rest, 'member', 'remove', id);
        } catch (err) {
          if (/member not found/.test(String(err))) return 'removed';
          if (transient.test(String(err))) return undefined;
          throw err;
        }
      });
      inCluster = rest;
      expect(await exited).toBe(0);
    };

    // Grow 1 -> 3 -> 5.
    await add('m1');
    await add('m2');
    expect(listMembers(inCluster).filter((m) => !m.learner)).toHaveLength(3);
    await add('m3');
    await add('m4');
    expect(listMembers(inCluster).filter((m) => !m.learner)).toHaveLength(5);
    // Replace m1 by m5.
    await remove(1);
    await add('m5');
    // Shrink 5 -> 3.
    await remove(2);
    await remove(3);
    expect(inCluster).toEqual([0, 4, 5]);
    expect(
      listMembers(inCluster)
        .map((m) => m.name)
        .sort(),
    ).toEqual(['m0', 'm4', 'm5']);

    // Move m4 to a new peer URL: member update, then restart it listening there.
    const m4 = 4;
    const id4 = idOf(m4);
    const newPeer = await freePort();
    await until('member update m4', () => {
      try {
        return ctl([0, 5], 'member', 'update', id4, `--peer-urls=http://127.0.0.1:${newPeer}`);
      } catch (err) {
        if (transient.test(String(err))) return undefined;
        throw err;
      }
    });
    expect(await cl.stop(m4)).toBe(0);
    const slot = cl.members[m4] as { peerPort: number; advertisedPeerPort: number };
    slot.peerPort = newPeer;
    slot.advertisedPeerPort = newPeer;
    await cl.restart(m4);
    expect(listMembers([0, 5]).find((m) => m.name === 'm4')?.peer).toBe(`http://127.0.0.1:${newPeer}`);

    // Let the writer run a little with m4 on its new URL, then stop it.
    const before = acked.size;
    await until('writes after the update', () => (acked.size > before + 20 ? true : undefined));
    stop = true;
    await writer;
    await kv.close();
    expect(acked.size).toBeGreaterThan(100);

    // Every acknowledged write on every member, each read linearizably through that member (m4
    // included: it replicates from its new peer URL).
    for (const i of inCluster) {
      const one = await connect({ backend: 'etcd', endpoints: [cl.members[i]!.endpoint], lazy: true });
      try {
        const r = await one.range('w/', { prefix: true });
        const have = new Map(
          r.kvs.map((x) => [Buffer.from(x.key).toString(), Buffer.from(x.value).toString()]),
        );
        const missing = [...acked].filter(([k, v]) => have.get(k) !== v);
        expect(missing.slice(0, 5), `member ${cl.members[i]!.name}: ${missing.length} missing`).toEqual([]);
      } finally {
        await one.close();
      }
    }
    // Writes failed only while leadership moved or the cluster changed; most went through.
    expect(failed).toBeLessThan(acked.size);
  }, 420_000);
});
