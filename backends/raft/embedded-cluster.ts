/**
 * An in-process Raft cluster: its members (memory or durable storage), an in-memory network
 * between them, and the fault hooks tests use (kill, restart, partition, heal, transferLeader).
 * Its clients (`cluster.kv`, `cluster.client()`) are `EmbeddedKV`s (embedded-kv.ts), which see the
 * cluster only through the narrow `EmbeddedKVCluster` view.
 */
import { join } from 'node:path';
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import type { KV } from '../../src/kv.js';
import type { NodeStorage } from './consensus/node-storage.js';
import type { NodeId } from './consensus/types.js';
import { EmbeddedKV, type EmbeddedKVCluster } from './embedded-kv.js';
import { type RequestLimits, resolveRequestLimits } from './limits.js';
import { RaftNode } from './node/node.js';
import { DiskStorage } from './storage/disk-storage.js';
import { MemoryTransport } from './transport/memory.js';

export interface ClusterOptions {
  nodes?: number;
  tickMs?: number;
  electionTicks?: number;
  heartbeatTicks?: number;
  requestTimeoutMs?: number;
  /**
   * Durable storage: each member keeps its WAL and snapshots in `<dataDir>/member-<id>` and comes
   * back from them on restart (use `EmbeddedCluster.open` or `startCluster`). Without it, memory only.
   */
  dataDir?: string;
  /** WAL segment size (default 64 MiB). */
  segmentBytes?: number;
  /** Snapshot and compact the log every this many applied entries. */
  snapshotEntries?: number;
  /** How long `startCluster` waits for the first leader (default `startTimeoutMsDefault`). */
  startTimeoutMs?: number;
  /** Where storage reports repairs (torn tails) and fatal errors; default `console.error`. */
  log?: (message: string) => void;
  /**
   * The monotonic clock (ms) lease deadlines are kept on (default `performance.now`). Tests inject
   * a virtual clock to expire a lease without waiting its TTL; Raft ticks still come from a timer.
   */
  now?: () => number;
  /** etcd's `--max-request-bytes`: larger writes fail `request-too-large` (default 1.5 MiB, as etcd). */
  maxRequestBytes?: number;
  /** etcd's `--max-txn-ops`: a txn list longer than this fails `too-many-ops` (default 128, as etcd). */
  maxTxnOps?: number;
}

/** Default wait for the first leader in `startCluster` (recovering a large data dir takes a while). */
export const startTimeoutMsDefault = 60_000;

/** etcd's minimum lease TTL: ceil(1.5 × election timeout), in seconds. */
function minTtlSeconds(tickMs: number, electionTicks: number): number {
  return Math.max(1, Math.ceil((Math.floor((3 * electionTicks) / 2) * tickMs) / 1000));
}

export class EmbeddedCluster implements EmbeddedKVCluster {
  readonly transport = new MemoryTransport();
  readonly members = new Map<NodeId, RaftNode>();
  readonly ids: NodeId[];
  readonly minTtlSeconds: number;
  /** The clock lease deadlines are kept on (`ClusterOptions.now`). */
  readonly now: () => number;
  /** The request limits every member enforces where it proposes (backends/raft/limits.ts). */
  readonly limits: RequestLimits;
  readonly #o: Required<
    Omit<
      ClusterOptions,
      | 'dataDir'
      | 'segmentBytes'
      | 'snapshotEntries'
      | 'log'
      | 'now'
      | 'startTimeoutMs'
      | 'maxRequestBytes'
      | 'maxTxnOps'
    >
  > &
    Pick<ClusterOptions, 'dataDir' | 'segmentBytes' | 'snapshotEntries' | 'log'>;
  readonly kv: EmbeddedKV;

  /** A cluster whose members use durable storage when `o.dataDir` is set (opened and recovered first). */
  static async open(o: ClusterOptions = {}): Promise<EmbeddedCluster> {
    if (o.dataDir === undefined) return new EmbeddedCluster(o);
    const nodes = checkNodes(o.nodes ?? 1);
    const ids = Array.from({ length: nodes }, (_, i) => i + 1);
    const storages = new Map<NodeId, NodeStorage>();
    try {
      for (const id of ids) storages.set(id, await openMemberStorage(o, id, ids));
    } catch (err) {
      for (const st of storages.values()) await st.close();
      throw err;
    }
    return new EmbeddedCluster(o, storages);
  }

  constructor(o: ClusterOptions = {}, storages?: ReadonlyMap<NodeId, NodeStorage>) {
    const nodes = checkNodes(o.nodes ?? 1);
    if (o.dataDir !== undefined && !storages)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        'EmbeddedCluster: with dataDir, use EmbeddedCluster.open() or startCluster()',
      );
    this.#o = {
      ...o,
      nodes,
      tickMs: o.tickMs ?? 10,
      // Durable members wait on fsyncs (heartbeats go out after each sync): a longer election
      // timeout (500 ms, etcd's default is 1 s) keeps a slow disk from looking like a dead leader.
      electionTicks: o.electionTicks ?? (o.dataDir !== undefined ? 50 : 10),
      heartbeatTicks: o.heartbeatTicks ?? 1,
      requestTimeoutMs: o.requestTimeoutMs ?? 5000,
    };
    this.now = o.now ?? (() => performance.now());
    this.limits = resolveRequestLimits({
      ...(o.maxRequestBytes !== undefined ? { maxRequestBytes: o.maxRequestBytes } : {}),
      ...(o.maxTxnOps !== undefined ? { maxTxnOps: o.maxTxnOps } : {}),
    });
    this.ids = Array.from({ length: nodes }, (_, i) => i + 1);
    this.minTtlSeconds = minTtlSeconds(this.#o.tickMs, this.#o.electionTicks);
    for (const id of this.ids) this.#start(id, storages?.get(id));
    // A fresh cluster elects member 1 at once; a recovered one holds a normal election.
    if (this.members.get(1)!.storage.lastIndex() === 0) this.members.get(1)!.campaign();
    this.kv = new EmbeddedKV(this);
  }

  #start(id: NodeId, storage?: NodeStorage): RaftNode {
    const n = new RaftNode({
      id,
      voters: this.ids,
      transport: this.transport,
      tickMs: this.#o.tickMs,
      electionTicks: this.#o.electionTicks,
      heartbeatTicks: this.#o.heartbeatTicks,
      minTtlSeconds: this.minTtlSeconds,
      requestTimeoutMs: this.#o.requestTimeoutMs,
      now: this.now,
      random: Math.random,
      limits: this.limits,
      ...(storage ? { storage } : {}),
      ...(this.#o.snapshotEntries !== undefined ? { snapshotEntries: this.#o.snapshotEntries } : {}),
      onFatal: (err) => (this.#o.log ?? console.error)(`conclave: member ${id} stopped: ${String(err)}`),
    });
    this.members.set(id, n);
    return n;
  }

  /** How long a request may wait on the cluster (a proposal to apply, a leader, a revocation). */
  get requestTimeoutMs(): number {
    return this.#o.requestTimeoutMs;
  }

  /** The member that leads now, if any (no waiting; see `waitLeader`). */
  leader(): RaftNode | undefined {
    for (const n of this.members.values()) if (!n.stopped && n.isLeader) return n;
    return undefined;
  }

  /** Waits (bounded) for a leader. */
  async waitLeader(signal?: AbortSignal, timeoutMs = this.#o.requestTimeoutMs): Promise<RaftNode> {
    const until = performance.now() + timeoutMs;
    while (true) {
      const l = this.leader();
      if (l) return l;
      signal?.throwIfAborted();
      if (performance.now() > until)
        throw new ConclaveError(ErrorCode.Unavailable, 'embedded cluster: no leader elected in time');
      await new Promise((r) => setTimeout(r, this.#o.tickMs));
    }
  }

  /** Watches open on this cluster's clients (what `retain` counts). */
  #retained = 0;
  /** A ref'd handle that keeps the process alive while `#retained > 0`. */
  #hold: ReturnType<typeof setInterval> | undefined;

  /**
   * Keeps the process alive until the returned release is called (idempotent). The members' ticks
   * are unref'd (a store alone does not hold a script open), so an open watch takes a hold: its
   * events may come from a lease expiring, which needs ticks, as an etcd client's open watch
   * stream holds its socket.
   */
  retain(): () => void {
    if (this.#retained++ === 0) this.#hold = setInterval(() => undefined, 1 << 30);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (--this.#retained === 0) {
        clearInterval(this.#hold);
        this.#hold = undefined;
      }
    };
  }

  /** A new client of this cluster (its own open/closed state; closing it leaves the cluster running). */
  client(): KV {
    return new EmbeddedKV(this);
  }

  /** Waits (bounded by the request timeout) for a live member: where a moved watch goes. */
  async liveMember(signal: AbortSignal): Promise<RaftNode> {
    const until = performance.now() + this.#o.requestTimeoutMs;
    while (true) {
      for (const n of this.members.values()) if (!n.stopped) return n;
      signal.throwIfAborted();
      if (performance.now() > until)
        throw new ConclaveError(ErrorCode.Unavailable, 'embedded cluster: no live member to serve the watch');
      await new Promise((r) => setTimeout(r, this.#o.tickMs));
    }
  }

  /** A live member (for serializable reads and watches). */
  anyMember(): RaftNode {
    for (const n of this.members.values()) if (!n.stopped) return n;
    throw new ConclaveError(ErrorCode.Unavailable, 'embedded cluster: every member is stopped');
  }

  /** Stops a member as a crash would (with durable storage: what it had synced stays on disk). */
  kill(id: NodeId): Promise<void> {
    return this.members.get(id)?.stop() ?? Promise.resolve();
  }

  /**
   * Restarts a killed member from what it persisted: memory storage is reused as is; durable
   * storage is reopened and recovered from its directory (snapshot, then the WAL after it).
   */
  async restart(id: NodeId): Promise<RaftNode | undefined> {
    const old = this.members.get(id);
    if (!old?.stopped) return old;
    await old.stop();
    const storage =
      this.#o.dataDir !== undefined ? await openMemberStorage(this.#o, id, this.ids) : old.storage;
    return this.#start(id, storage);
  }

  /** Cuts the in-memory network into the given groups of member ids (tests); `heal()` undoes it. */
  partition(...groups: NodeId[][]): void {
    this.transport.partition(...groups);
  }

  /** Restores every link cut by `partition`. */
  heal(): void {
    this.transport.heal();
  }

  /** Asks the current leader to hand leadership to member `to` (Raft §3.10 leadership transfer). */
  transferLeader(to: NodeId): void {
    this.leader()?.raft.transferLeader(to);
  }

  /** WAL statistics summed over the running members (zeros for memory storage): for benchmarks. */
  storageStats(): { syncs: number; entries: number; bytes: number } {
    const sum = { syncs: 0, entries: 0, bytes: 0 };
    for (const m of this.members.values()) {
      if (m.stopped || !(m.storage instanceof DiskStorage)) continue;
      const st = m.storage.walStats;
      sum.syncs += st.syncs;
      sum.entries += st.entries;
      sum.bytes += st.bytes;
    }
    return sum;
  }

  /** Stops every member (resolves when their storage is closed). */
  async close(): Promise<void> {
    clearInterval(this.#hold);
    this.#hold = undefined;
    await Promise.all([...this.members.values()].map((n) => n.stop()));
  }
}

function checkNodes(nodes: number): number {
  if (!Number.isInteger(nodes) || nodes < 1 || nodes > 9)
    throw new ConclaveError(ErrorCode.InvalidArgument, `nodes must be 1..9, got ${nodes}`);
  return nodes;
}

function openMemberStorage(o: ClusterOptions, id: NodeId, ids: readonly NodeId[]): Promise<DiskStorage> {
  return DiskStorage.open({
    dataDir: join(o.dataDir!, `member-${id}`),
    nodeId: id,
    voters: ids,
    ...(o.segmentBytes !== undefined ? { segmentBytes: o.segmentBytes } : {}),
    log: o.log ?? ((m) => console.error(`conclave: member ${id}: ${m}`)),
  });
}

/** Starts an in-process cluster (durable with `dataDir`) and waits for its first leader. */
export async function startCluster(o: ClusterOptions = {}): Promise<EmbeddedCluster> {
  const c = await EmbeddedCluster.open(o);
  try {
    // A recovered member replays its log before it can campaign: allow for a large one.
    await c.waitLeader(undefined, o.startTimeoutMs ?? startTimeoutMsDefault);
  } catch (err) {
    await c.close();
    throw err;
  }
  return c;
}
