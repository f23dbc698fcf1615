/**
 * Fixtures for the lease-safety tests of the Raft store: a hand-moved clock, clusters of every
 * storage flavour, and a gate that holds a revocation "in flight" (proposed, not yet applied) for
 * as long as a test wants, by holding the members' persistence of the Ready that carries it.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MemoryStorage } from '../../backends/raft/consensus/memory-storage.js';
import type { NodeStorage } from '../../backends/raft/consensus/node-storage.js';
import { EntryType } from '../../backends/raft/consensus/types.js';
import { EmbeddedCluster } from '../../backends/raft/embedded.js';
import { decodeCommand } from '../../backends/raft/node/commands.js';
import { DiskStorage } from '../../backends/raft/storage/disk-storage.js';
import { waitFor } from '../conformance/util.js';

/** A hand-moved monotonic clock; counts reads so a test can wait for the leader's expiry checks. */
export class VirtualClock {
  ms = 1_000_000;
  reads = 0;
  readonly now = (): number => {
    this.reads++;
    return this.ms;
  };
  advance(ms: number): void {
    this.ms += ms;
  }
  /**
   * Waits until the clock was read `n` more times: the leader reads it on every tick to look for
   * expired leases, so this waits for that many expiry checks (event-driven, not a fixed sleep).
   */
  async readsMore(n: number, what: string): Promise<void> {
    const target = this.reads + n;
    await waitFor(() => this.reads >= target, 10_000, what);
  }
}

/** Holds every Ready that carries a revoke command on the gated members until `release()`. */
export class RevocationGate {
  #closed = false;
  #held: Array<() => void> = [];
  /** Revoke entries seen by a gated save (held or not). */
  seen = 0;

  close(): void {
    this.#closed = true;
  }

  /** Lets every held save complete, and no longer holds new ones. */
  release(): void {
    this.#closed = false;
    const h = this.#held;
    this.#held = [];
    for (const r of h) r();
  }

  get holding(): number {
    return this.#held.length;
  }

  /** Wraps `st.save` in place: the write happens at once; its completion waits while the gate is closed. */
  wrap(st: NodeStorage, active: () => boolean): void {
    const save = st.save.bind(st);
    st.save = (rd) => {
      const done = save(rd);
      const revokes = rd.entries.filter((e) => {
        if (e.type !== EntryType.Normal || e.data.length === 0) return false;
        try {
          return decodeCommand(e.data).op === 'revoke';
        } catch {
          return false;
        }
      }).length;
      this.seen += revokes;
      if (!this.#closed || revokes === 0 || !active()) return done;
      return new Promise<void>((resolve, reject) => {
        this.#held.push(() => Promise.resolve(done).then(resolve, reject));
      });
    };
  }
}

/**
 * Storages for the members `1..nodes` (durable under `dir`, else memory) and a gate on them, to
 * hand to `new EmbeddedCluster(o, storages)`; call `gated(cluster)` once it exists. The gate holds
 * the followers' persistence (with 3 members the leader needs one follower to commit; its own write
 * is not needed) or, with one member, the member's own.
 */
export async function gatedStorages(
  nodes: number,
  dir?: string,
): Promise<{ storages: Map<number, NodeStorage>; gate: RevocationGate; gated(c: EmbeddedCluster): void }> {
  const ids = Array.from({ length: nodes }, (_, i) => i + 1);
  const gate = new RevocationGate();
  const storages = new Map<number, NodeStorage>();
  for (const id of ids) {
    const st = dir
      ? await DiskStorage.open({ dataDir: join(dir, `member-${id}`), nodeId: id, voters: ids, log: () => {} })
      : new MemoryStorage({ voters: ids, learners: [] });
    storages.set(id, st);
  }
  return {
    storages,
    gate,
    gated: (c) => {
      for (const id of ids) gate.wrap(storages.get(id)!, () => nodes === 1 || !c.members.get(id)!.isLeader);
    },
  };
}

export interface LeaseCluster {
  cluster: EmbeddedCluster;
  gate: RevocationGate;
  clock: VirtualClock;
  close(): Promise<void>;
}

/**
 * A cluster on a virtual lease clock whose revocations can be held in flight. The gate holds the
 * followers' persistence (with 3 members the leader needs one follower to commit; its own write
 * is not needed) or, with one member, the member's own.
 */
export async function leaseCluster(o: { nodes: number; durable: boolean }): Promise<LeaseCluster> {
  const clock = new VirtualClock();
  const dir = o.durable ? mkdtempSync(join(tmpdir(), 'conclave-lease-')) : undefined;
  const { storages, gate, gated } = await gatedStorages(o.nodes, dir);
  const cluster = new EmbeddedCluster(
    { nodes: o.nodes, now: clock.now, ...(dir ? { dataDir: dir } : {}) },
    storages,
  );
  gated(cluster);
  try {
    await cluster.waitLeader(undefined, 30_000);
  } catch (err) {
    await cluster.close();
    throw err;
  }
  return {
    cluster,
    gate,
    clock,
    close: async () => {
      gate.release();
      await cluster.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    },
  };
}
