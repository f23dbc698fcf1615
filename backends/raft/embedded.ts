/**
 * The embedded backend: an in-process Raft cluster (memory-only storage in this issue) exposed as
 * the KV contract. `startCluster({ nodes: 3 })` returns the cluster with fault hooks for tests
 * (kill, restart, partition, heal, transferLeader); `connectEmbedded` returns a KV that owns one.
 *
 * Routing: writes and linearizable reads go to the current leader (bounded retries while there is
 * none); serializable reads and watches are served by a member's applied state.
 */
import { randomBytes } from 'node:crypto';
import type { EmbeddedConnectOptions } from '../../src/connect.js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';
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
import {
  checkBytes,
  checkKey,
  checkLeaseId,
  checkNonNegativeInt,
  checkOptionsObject,
  checkRevision,
  checkSignal,
  checkTtl,
  checkTxn,
} from '../../src/validate.js';
import type { NodeId } from './consensus/types.js';
import { type CommandBody, RaftNode } from './node/node.js';
import { MemoryTransport } from './transport/memory.js';

export interface ClusterOptions {
  nodes?: number;
  tickMs?: number;
  electionTicks?: number;
  heartbeatTicks?: number;
  requestTimeoutMs?: number;
}

/** etcd's minimum lease TTL: ceil(1.5 × election timeout), in seconds. */
function minTtlSeconds(tickMs: number, electionTicks: number): number {
  return Math.max(1, Math.ceil((Math.floor((3 * electionTicks) / 2) * tickMs) / 1000));
}

export class EmbeddedCluster {
  readonly transport = new MemoryTransport();
  readonly members = new Map<NodeId, RaftNode>();
  readonly ids: NodeId[];
  readonly minTtlSeconds: number;
  readonly #o: Required<ClusterOptions>;
  readonly kv: EmbeddedKV;

  constructor(o: ClusterOptions = {}) {
    const nodes = o.nodes ?? 1;
    if (!Number.isInteger(nodes) || nodes < 1 || nodes > 9)
      throw new ConclaveError(ErrorCode.InvalidArgument, `nodes must be 1..9, got ${nodes}`);
    this.#o = {
      nodes,
      tickMs: o.tickMs ?? 10,
      electionTicks: o.electionTicks ?? 10,
      heartbeatTicks: o.heartbeatTicks ?? 1,
      requestTimeoutMs: o.requestTimeoutMs ?? 5000,
    };
    this.ids = Array.from({ length: nodes }, (_, i) => i + 1);
    this.minTtlSeconds = minTtlSeconds(this.#o.tickMs, this.#o.electionTicks);
    for (const id of this.ids) this.#start(id);
    this.members.get(1)!.campaign();
    this.kv = new EmbeddedKV(this);
  }

  #start(id: NodeId, storage?: RaftNode['storage']): RaftNode {
    const n = new RaftNode({
      id,
      voters: this.ids,
      transport: this.transport,
      tickMs: this.#o.tickMs,
      electionTicks: this.#o.electionTicks,
      heartbeatTicks: this.#o.heartbeatTicks,
      minTtlSeconds: this.minTtlSeconds,
      requestTimeoutMs: this.#o.requestTimeoutMs,
      now: () => performance.now(),
      random: Math.random,
      ...(storage ? { storage } : {}),
    });
    this.members.set(id, n);
    return n;
  }

  leader(): RaftNode | undefined {
    for (const n of this.members.values()) if (!n.stopped && n.isLeader) return n;
    return undefined;
  }

  /** Waits (bounded) for a leader. */
  async waitLeader(signal?: AbortSignal): Promise<RaftNode> {
    const until = performance.now() + this.#o.requestTimeoutMs;
    while (true) {
      const l = this.leader();
      if (l) return l;
      signal?.throwIfAborted();
      if (performance.now() > until)
        throw new ConclaveError(ErrorCode.Unavailable, 'embedded cluster: no leader elected in time');
      await new Promise((r) => setTimeout(r, this.#o.tickMs));
    }
  }

  /** A live member (for serializable reads and watches). */
  anyMember(): RaftNode {
    for (const n of this.members.values()) if (!n.stopped) return n;
    throw new ConclaveError(ErrorCode.Unavailable, 'embedded cluster: every member is stopped');
  }

  kill(id: NodeId): void {
    this.members.get(id)?.stop();
  }

  /** Restarts a killed member from what it persisted (its state machine is rebuilt from the log). */
  restart(id: NodeId): void {
    const old = this.members.get(id);
    if (!old || !old.stopped) return;
    this.#start(id, old.storage);
  }

  partition(...groups: NodeId[][]): void {
    this.transport.partition(...groups);
  }

  heal(): void {
    this.transport.heal();
  }

  transferLeader(to: NodeId): void {
    this.leader()?.raft.transferLeader(to);
  }

  close(): void {
    for (const n of this.members.values()) n.stop();
  }
}

export function startCluster(o: ClusterOptions = {}): EmbeddedCluster {
  return new EmbeddedCluster(o);
}

export async function connectEmbedded(o: EmbeddedConnectOptions): Promise<KV> {
  if (o.dataDir !== undefined) {
    throw new ConclaveError(
      ErrorCode.InvalidArgument,
      'embedded: durable storage (dir=…) is not built yet (issue 5); omit it for a memory-only cluster',
    );
  }
  const c = startCluster({ nodes: o.nodes ?? 1 });
  await c.waitLeader();
  const kv = c.kv;
  const close = kv.close.bind(kv);
  kv.close = async () => {
    await close();
    c.close();
  };
  return kv;
}

export class EmbeddedKV implements KV {
  readonly #c: EmbeddedCluster;
  #closed = false;
  readonly lease: LeaseApi;

  constructor(c: EmbeddedCluster) {
    this.#c = c;
    this.lease = {
      grant: async (ttl, o = {}) => {
        this.#open(o);
        checkTtl('ttlSeconds', ttl);
        const id =
          o.id === undefined || o.id === 0n
            ? BigInt(`0x${randomBytes(6).toString('hex')}`) + 1n
            : checkLeaseId('id', o.id);
        return this.#write({ op: 'grant', lease: id, ttlSeconds: ttl }, o.signal);
      },
      revoke: async (id, o = {}) => {
        this.#open(o);
        checkLeaseId('id', id, { allowZero: false });
        return this.#write({ op: 'revoke', lease: id }, o.signal);
      },
      keepAliveOnce: async (id, o = {}) => {
        this.#open(o);
        checkLeaseId('id', id, { allowZero: false });
        // Served by the leader without a log entry (etcd): it owns lease deadlines.
        const l = await this.#c.waitLeader(o.signal);
        return { id, ttlSeconds: l.store.leases.renew(id, performance.now()) };
      },
      timeToLive: async (id, o = {}) => {
        this.#open(o);
        checkLeaseId('id', id, { allowZero: false });
        const l = await this.#c.waitLeader(o.signal);
        await l.readIndex();
        const lease = l.store.leases.get(id);
        const keys =
          o.keys && lease ? [...lease.keys].map((k) => new Uint8Array(Buffer.from(k, 'latin1'))) : [];
        return {
          id,
          ttlSeconds: l.store.leases.remainingSeconds(id, performance.now()),
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
    checkOptionsObject('options', o);
    checkSignal(o);
    if (this.#closed) throw new ConclaveError(ErrorCode.Closed, 'the embedded client is closed');
    o?.signal?.throwIfAborted();
  }

  /** Proposes through the leader, retrying (bounded) only failures that certainly did not apply. */
  async #write<T>(cmd: CommandBody, signal?: AbortSignal): Promise<T> {
    for (let attempt = 1; ; attempt++) {
      const l = await this.#c.waitLeader(signal);
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

  #checkRange(key: Bytes, o: RangeOptions | DeleteOptions): void {
    checkBytes('key', key);
    if (!o.prefix && !o.fromKey && o.end === undefined) checkKey('key', key);
    const r = o as RangeOptions;
    if (r.limit !== undefined) checkNonNegativeInt('limit', r.limit);
    if (r.revision !== undefined) checkRevision('revision', r.revision);
    for (const f of ['minModRevision', 'maxModRevision', 'minCreateRevision', 'maxCreateRevision'] as const) {
      if (r[f] !== undefined) checkRevision(f, r[f]);
    }
  }

  async get(key: Bytes, o: GetOptions = {}): Promise<KeyValue | undefined> {
    this.#open(o);
    checkKey('key', key);
    if (o.revision !== undefined) checkRevision('revision', o.revision);
    const n = await this.#readNode(o);
    return n.store.range(key, o).kvs[0];
  }

  async range(key: Bytes, o: RangeOptions = {}): Promise<RangeResult> {
    this.#open(o);
    this.#checkRange(key, o);
    const n = await this.#readNode(o);
    return n.store.range(key, o);
  }

  async put(key: Bytes, value: Bytes, o: PutOptions = {}): Promise<PutResult> {
    this.#open(o);
    const k = checkKey('key', key);
    const v = checkBytes('value', value);
    if (o.lease !== undefined) checkLeaseId('lease', o.lease);
    const { signal: _s, ...opts } = o;
    return this.#write({ op: 'put', key: k, value: v, opts }, o.signal);
  }

  async delete(key: Bytes, o: DeleteOptions = {}): Promise<DeleteResult> {
    this.#open(o);
    this.#checkRange(key, o);
    const { signal: _s, ...opts } = o;
    return this.#write({ op: 'delete', key: toBytes(key), opts }, o.signal);
  }

  async txn(t: Txn, o: CallOptions = {}): Promise<TxnResult> {
    this.#open(o);
    checkTxn(t);
    return this.#write({ op: 'txn', txn: t }, o.signal);
  }

  watch(key: Bytes, o: WatchOptions = {}): Watch {
    this.#open(o);
    checkBytes('key', key);
    if (o.startRevision !== undefined) checkRevision('startRevision', o.startRevision);
    return this.#c.anyMember().store.hub.watch(key, o);
  }

  async compact(revision: number, o: CompactOptions = {}): Promise<void> {
    this.#open(o);
    checkRevision('revision', revision, { allowZero: false });
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

  async close(): Promise<void> {
    this.#closed = true;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }
}
