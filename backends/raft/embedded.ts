/**
 * The embedded backend: an in-process Raft cluster (memory or durable storage) exposed as
 * the KV contract. `startCluster({ nodes: 3 })` returns the cluster with fault hooks for tests
 * (kill, restart, partition, heal, transferLeader); `connectEmbedded` returns a KV that owns one.
 *
 * Routing: writes and linearizable reads go to the current leader (bounded retries while there is
 * none); serializable reads and watches are served by a member's applied state.
 */
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { abortReason, ConclaveError, ErrorCode } from '../../src/errors.js';
import { toBytes } from '../../src/keys.js';
import type { KV } from '../../src/kv.js';
import { limits } from '../../src/limits.js';
import type {
  Bytes,
  CallOptions,
  CompactOptions,
  DeleteOptions,
  DeleteResult,
  GetOptions,
  KeyValue,
  LeaseApi,
  PutOptions,
  PutResult,
  RangeOptions,
  RangeResult,
  StatusResult,
  Txn,
  TxnResult,
  Watch,
  WatchOptions,
} from '../../src/types.js';
import { checkArgs } from '../../src/validate.js';
import type { NodeStorage } from './consensus/node-storage.js';
import type { NodeId } from './consensus/types.js';
import { FailoverWatch } from './failover-watch.js';
import { type RequestLimits, resolveRequestLimits } from './limits.js';
import { type CommandBody, RaftNode } from './node/node.js';
import { DiskStorage } from './storage/disk-storage.js';
import { watchCloseSliceMax } from './store/watch-hub.js';
import { MemoryTransport } from './transport/memory.js';

/** Options of an in-process Raft store (`connect('embedded:…')`). */
export interface EmbeddedConnectOptions {
  /** Selects the embedded Raft backend. */
  backend: 'embedded';
  /** Members of the in-process cluster (default 1). */
  nodes?: number;
  /** Directory for durable storage; memory-only when absent. */
  dataDir?: string;
}

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

/** Pause before a keep-alive refused "not primary" is retried on the leader (etcd's LeaseRenew sleeps 50 ms). */
const keepAliveRetryMs = 10;

/** `p`, or the signal's reason as soon as it aborts (the work behind `p` goes on). */
function untilAborted<T>(p: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return p;
  if (signal.aborted) return Promise.reject(abortReason(signal));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(abortReason(signal));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}

/** Default wait for the first leader in `startCluster` (recovering a large data dir takes a while). */
export const startTimeoutMsDefault = 60_000;

/** etcd's minimum lease TTL: ceil(1.5 × election timeout), in seconds. */
function minTtlSeconds(tickMs: number, electionTicks: number): number {
  return Math.max(1, Math.ceil((Math.floor((3 * electionTicks) / 2) * tickMs) / 1000));
}

export class EmbeddedCluster {
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

export async function connectEmbedded(o: EmbeddedConnectOptions): Promise<KV> {
  const c = await startCluster({
    nodes: o.nodes ?? 1,
    ...(o.dataDir !== undefined ? { dataDir: o.dataDir } : {}),
  });
  const kv = c.kv;
  const close = kv.close.bind(kv);
  kv.close = async () => {
    await close();
    await c.close();
  };
  return kv;
}

export class EmbeddedKV implements KV {
  readonly #c: EmbeddedCluster;
  #closed = false;
  /** Open watches, ended by `close()` (bounded by the store's `watchersMax`). */
  readonly #watches = new Set<FailoverWatch>();
  readonly lease: LeaseApi;

  constructor(c: EmbeddedCluster) {
    this.#c = c;
    this.lease = {
      grant: async (ttl, o = {}) => {
        this.#open(o);
        const asked = checkArgs.leaseGrant(ttl, o);
        const id = asked === 0n ? BigInt(`0x${randomBytes(6).toString('hex')}`) + 1n : asked;
        return this.#write({ op: 'grant', lease: id, ttlSeconds: ttl }, o.signal);
      },
      revoke: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        return this.#write({ op: 'revoke', lease: id }, o.signal);
      },
      keepAliveOnce: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        // Served by the lease primary without a log entry (etcd): it owns lease deadlines. An
        // expiring lease is never renewed: the primary answers 0 once its revocation applies.
        // "Not primary" (no leader yet, a new leader still applying earlier terms, leadership
        // moved during that wait) is retried on the leader until the request timeout, as etcd's
        // LeaseRenew forwards to the leader until its request timeout.
        const until = performance.now() + this.#c.requestTimeoutMs;
        for (;;) {
          const l = this.#c.leader() ?? (await this.#c.waitLeader(o.signal));
          try {
            return { id, ttlSeconds: await untilAborted(l.renewLease(id), o.signal) };
          } catch (err) {
            if (!ConclaveError.is(err, ErrorCode.Unavailable) || performance.now() >= until) throw err;
            o.signal?.throwIfAborted();
            await new Promise((r) => setTimeout(r, keepAliveRetryMs));
          }
        }
      },
      timeToLive: async (id, o = {}) => {
        this.#open(o);
        checkArgs.leaseId(id);
        const l = await this.#c.waitLeader(o.signal);
        await l.readIndex();
        const lease = l.store.leases.get(id);
        const keys =
          o.keys && lease ? [...lease.keys].map((k) => new Uint8Array(Buffer.from(k, 'latin1'))) : [];
        return {
          id,
          ttlSeconds: l.store.leases.remainingSeconds(id, this.#c.now()),
          grantedTtlSeconds: lease?.grantedTtlSeconds ?? 0,
          keys,
        };
      },
      list: async (o = {}) => {
        this.#open(o);
        const l = await this.#c.waitLeader(o.signal);
        await l.readIndex();
        return [...l.store.leases.byId.keys()];
      },
    };
  }

  #open(o: CallOptions | undefined): void {
    checkArgs.options(o);
    if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'the embedded client is closed');
    o?.signal?.throwIfAborted();
  }

  /** Proposes through the leader, retrying (bounded) only failures that certainly did not apply. */
  async #write<T>(cmd: CommandBody, signal?: AbortSignal): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      // The known leader without a turn of the event loop (waitLeader is async); else wait for one.
      const l = this.#c.leader() ?? (await this.#c.waitLeader(signal));
      try {
        const r = await l.propose<T>(cmd);
        signal?.throwIfAborted();
        return r;
      } catch (err) {
        if (!ConclaveError.is(err) || !err.retryable || attempt >= limits.retryAttemptsMax) throw err;
        await new Promise((r) => setTimeout(r, 10 * attempt));
      }
    }
  }

  async #readNode(o: { serializable?: boolean; signal?: AbortSignal }) {
    if (o.serializable) return this.#c.anyMember();
    for (let attempt = 1; ; attempt++) {
      const l = await this.#c.waitLeader(o.signal);
      try {
        await l.readIndex();
        return l;
      } catch (err) {
        if (!ConclaveError.is(err) || !err.retryable || attempt >= limits.retryAttemptsMax) throw err;
      }
    }
  }

  async get(key: Bytes, o: GetOptions = {}): Promise<KeyValue | undefined> {
    this.#open(o);
    checkArgs.get(key, o);
    const n = await this.#readNode(o);
    return n.store.range(key, o).kvs[0];
  }

  async range(key: Bytes, o: RangeOptions = {}): Promise<RangeResult> {
    this.#open(o);
    checkArgs.range(key, o);
    const n = await this.#readNode(o);
    return n.store.range(key, o);
  }

  async put(key: Bytes, value: Bytes, o: PutOptions = {}): Promise<PutResult> {
    this.#open(o);
    const { key: k, value: v } = checkArgs.put(key, value, o);
    const { signal: _s, ...opts } = o;
    return this.#write({ op: 'put', key: k, value: v, opts }, o.signal);
  }

  async delete(key: Bytes, o: DeleteOptions = {}): Promise<DeleteResult> {
    this.#open(o);
    checkArgs.delete(key, o);
    const { signal: _s, ...opts } = o;
    return this.#write({ op: 'delete', key: toBytes(key), opts }, o.signal);
  }

  async txn(t: Txn, o: CallOptions = {}): Promise<TxnResult> {
    this.#open(o);
    checkArgs.txn(t);
    return this.#write({ op: 'txn', txn: t }, o.signal);
  }

  watch(key: Bytes, o: WatchOptions = {}): Watch {
    this.#open(o);
    checkArgs.watch(key, o);
    const release = this.#c.retain();
    let w: FailoverWatch;
    try {
      w = new FailoverWatch(this.#c, key, o, (closed) => {
        this.#watches.delete(closed);
        release();
      });
    } catch (err) {
      release();
      throw err;
    }
    this.#watches.add(w);
    return w;
  }

  async compact(revision: number, o: CompactOptions = {}): Promise<void> {
    this.#open(o);
    checkArgs.compact(revision);
    await this.#write({ op: 'compact', revision }, o.signal);
  }

  async status(o: CallOptions = {}): Promise<StatusResult> {
    this.#open(o);
    const l = await this.#c.waitLeader(o.signal);
    return {
      revision: l.store.revision,
      version: 'conclave-raft',
      memberId: BigInt(l.id),
      leader: BigInt(l.id),
      raftTerm: l.raft.term,
      raftIndex: l.raft.log.lastIndex,
    };
  }

  /**
   * Closes the client: later calls fail `closed`, and its open watches end, `watchCloseSliceMax`
   * per turn of the event loop (a client with 100,000 watches does not hold the members' ticks).
   */
  async close(): Promise<void> {
    this.#closed = true;
    const ws = [...this.#watches];
    for (let i = 0; i < ws.length; i += watchCloseSliceMax) {
      if (i > 0) await new Promise((r) => setImmediate(r));
      await Promise.all(ws.slice(i, i + watchCloseSliceMax).map((w) => w.close()));
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
