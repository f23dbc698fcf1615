/**
 * Prometheus metrics of one `conclave serve` member (GET /metrics on its client URLs and on
 * `--listen-metrics-urls`), named as etcd 3.4 names them where the meaning is the same, so
 * existing etcd dashboards and alerts work. docs/server.md lists every metric and what it measures
 * here.
 *
 * Cost: nothing is done per request beyond incrementing a number. Counters the member keeps are
 * plain fields of `MemberCounters` (and one histogram observed per WAL write batch, not per
 * request); gauges read the member's state when scraped (`collect`); the gRPC handled counts are
 * kept in arrays indexed by method and code and copied into the Prometheus counter at scrape time.
 *
 * Labels are written in the order of their names, as Prometheus's Go client writes them (etcd's
 * e2e suite greps /metrics for whole lines such as
 * `grpc_server_handled_total{grpc_code="Canceled",grpc_method="Watch",...}`); prom-client writes
 * them in the order of the label object's keys.
 */
import client from 'prom-client';
import type { MemberInfo } from './api.js';

/** The cluster version a Conclave cluster reports (etcd_cluster_version, as etcd's `version.Cluster`). */
export const clusterVersion = '3.4';

/** Buckets of etcd's disk histograms (etcd: ExponentialBuckets(0.001, 2, 14), 1 ms to 8 s). */
export const diskBuckets: readonly number[] = Array.from({ length: 14 }, (_, i) => 0.001 * 2 ** i);

/**
 * Counters the member increments on its own events (never per client request). Created by the
 * member, read by `ServerMetrics` at scrape time.
 */
export class MemberCounters {
  /** Leader changes this member has seen (etcd_server_leader_changes_seen_total). */
  leaderChanges = 0;
  /** Snapshots of the store saved to disk. */
  snapshotsSaved = 0;
  /**
   * Durations of durable WAL writes (write + fdatasync, one per batch of Raft records), seconds:
   * etcd_disk_wal_fsync_duration_seconds.
   */
  readonly walFsync = new client.Histogram({
    name: 'etcd_disk_wal_fsync_duration_seconds',
    help: 'The latency distributions of fsync called by WAL.',
    buckets: [...diskBuckets],
    registers: [],
  });
  /**
   * Durations of applying a batch of committed entries to the in-memory store, seconds: the
   * nearest equivalent of etcd's backend (bbolt) commit (etcd_disk_backend_commit_duration_seconds).
   */
  readonly backendCommit = new client.Histogram({
    name: 'etcd_disk_backend_commit_duration_seconds',
    help: 'The latency distributions of commit called by backend (here: applying a batch of committed entries to the store).',
    buckets: [...diskBuckets],
    registers: [],
  });
}

/** What the member offers the metrics beyond `MemberInfo` (all read at scrape time). */
export interface MemberMetricsSource {
  readonly counters: MemberCounters;
  /** Raft commit index (etcd sets proposals_committed_total to it). */
  committedIndex(): number;
  /** Proposals waiting to be applied on this member. */
  proposalsPending(): number;
  /** Proposals that failed: dropped, timed out, or lost to a leader change. */
  proposalsFailed(): number;
  /** Live keys in the store (etcd's keysGauge: created minus deleted). */
  keys(): number;
  /** Put and delete-range operations applied on this member since it started (etcd_mvcc_*_total). */
  applied(): { readonly puts: number; readonly deletes: number };
  /** Bytes sent to and received from each peer, by the peer's member ID in hex. */
  peerBytes(): Iterable<readonly [string, { readonly sent: number; readonly received: number }]>;
}

/** The gRPC methods counted in grpc_server_handled_total (etcd's go-grpc-prometheus labels). */
export interface MethodCounts {
  readonly service: string;
  readonly method: string;
  readonly type: string;
  /** Calls finished with each gRPC status code 0..16. */
  readonly byCode: Float64Array;
  started: number;
}

export const grpcCodeNames = [
  'OK',
  'Canceled',
  'Unknown',
  'InvalidArgument',
  'DeadlineExceeded',
  'NotFound',
  'AlreadyExists',
  'PermissionDenied',
  'ResourceExhausted',
  'FailedPrecondition',
  'Aborted',
  'OutOfRange',
  'Unimplemented',
  'Internal',
  'Unavailable',
  'DataLoss',
  'Unauthenticated',
] as const;

/**
 * A counter whose value is read from `value` at scrape time (prom-client counters only go up
 * through `inc`, so it is reset and set to the current total).
 */
function totalOf(r: client.Registry[], name: string, help: string, value: () => number): client.Counter {
  return new client.Counter({
    name,
    help,
    registers: r,
    collect() {
      this.reset();
      const v = value();
      if (v > 0) this.inc(v);
    },
  });
}

interface StreamCall {
  once(event: string, listener: (...a: never[]) => void): unknown;
}

/** A gRPC status code as an index of the counts (anything unexpected counts as Unknown). */
function codeOf(code: number | undefined): number {
  return code !== undefined && Number.isInteger(code) && code >= 0 && code <= 16 ? code : 2;
}

/** The metrics registry of one member: every client URL and metrics URL serves this one. */
export class ServerMetrics {
  readonly registry = new client.Registry();
  readonly #methods = new Map<string, MethodCounts>();
  #healthOk = 0;
  #healthFailed = 0;

  constructor(info: MemberInfo, member?: MemberMetricsSource) {
    const r = [this.registry];
    client.collectDefaultMetrics({ register: this.registry });
    const gauge = (name: string, help: string, value: () => number) =>
      new client.Gauge({
        name,
        help,
        registers: r,
        collect() {
          this.set(value());
        },
      });
    gauge('etcd_server_has_leader', 'Whether or not a leader exists. 1 is existence, 0 is not.', () =>
      info.leaderId() === 0n ? 0 : 1,
    );
    gauge('etcd_server_is_leader', 'Whether or not this member is a leader. 1 if is, 0 otherwise.', () =>
      info.leaderId() === info.memberId ? 1 : 0,
    );
    gauge('etcd_server_is_learner', 'Whether or not this member is a learner. 1 if is, 0 otherwise.', () =>
      info.members().some((x) => x.id === info.memberId && x.isLearner) ? 1 : 0,
    );
    new client.Gauge({
      name: 'etcd_server_id',
      help: "Server or member ID in hexadecimal format. 1 for 'server_id' label with current ID.",
      labelNames: ['server_id'],
      registers: r,
    }).set({ server_id: info.memberId.toString(16) }, 1);
    new client.Gauge({
      name: 'etcd_server_version',
      help: "Which version is running. 1 for 'server_version' label with current version.",
      labelNames: ['server_version'],
      registers: r,
    }).set({ server_version: info.version }, 1);
    // etcd sets this when the cluster version is decided (membership/cluster.go SetVersion); a
    // Conclave cluster speaks 3.4 from its first member on (every member runs the same API).
    new client.Gauge({
      name: 'etcd_cluster_version',
      help: "Which version is running. 1 for 'cluster_version' label with current cluster version",
      labelNames: ['cluster_version'],
      registers: r,
    }).set({ cluster_version: clusterVersion }, 1);
    gauge(
      'etcd_server_proposals_applied_total',
      'The total number of consensus proposals applied.',
      info.raftAppliedIndex,
    );
    gauge('etcd_mvcc_db_total_size_in_bytes', 'Total size of the underlying database in bytes.', () =>
      info.dbSizeBytes(),
    );
    gauge(
      'etcd_debugging_mvcc_db_total_size_in_bytes',
      'Total size of the underlying database in bytes.',
      () => info.dbSizeBytes(),
    );
    gauge('etcd_debugging_mvcc_current_revision', 'The current revision of store.', () => info.revision());
    totalOf(
      r,
      'etcd_server_health_success',
      'The total number of successful health checks',
      () => this.#healthOk,
    );
    totalOf(
      r,
      'etcd_server_health_failures',
      'The total number of failed health checks',
      () => this.#healthFailed,
    );
    const methods = this.#methods;
    new client.Counter({
      name: 'grpc_server_handled_total',
      help: 'Total number of RPCs completed on the server, regardless of success or failure.',
      labelNames: ['grpc_type', 'grpc_service', 'grpc_method', 'grpc_code'],
      registers: r,
      collect() {
        this.reset();
        for (const m of methods.values())
          for (let c = 0; c < m.byCode.length; c++)
            if (m.byCode[c]! > 0)
              this.inc(
                {
                  grpc_code: grpcCodeNames[c]!,
                  grpc_method: m.method,
                  grpc_service: m.service,
                  grpc_type: m.type,
                },
                m.byCode[c]!,
              );
      },
    });
    new client.Counter({
      name: 'grpc_server_started_total',
      help: 'Total number of RPCs started on the server.',
      labelNames: ['grpc_type', 'grpc_service', 'grpc_method'],
      registers: r,
      collect() {
        this.reset();
        for (const m of methods.values())
          if (m.started > 0)
            this.inc({ grpc_method: m.method, grpc_service: m.service, grpc_type: m.type }, m.started);
      },
    });
    if (member) this.#memberMetrics(member);
  }

  #memberMetrics(m: MemberMetricsSource): void {
    const r = [this.registry];
    const c = m.counters;
    const total = (name: string, help: string, value: () => number) => totalOf(r, name, help, value);
    const gauge = (name: string, help: string, value: () => number) =>
      new client.Gauge({
        name,
        help,
        registers: r,
        collect() {
          this.set(value());
        },
      });
    total(
      'etcd_server_leader_changes_seen_total',
      'The number of leader changes seen.',
      () => c.leaderChanges,
    );
    total('etcd_server_proposals_failed_total', 'The total number of failed proposals seen.', () =>
      m.proposalsFailed(),
    );
    gauge('etcd_server_proposals_committed_total', 'The total number of consensus proposals committed.', () =>
      m.committedIndex(),
    );
    gauge('etcd_server_proposals_pending', 'The current number of pending proposals to commit.', () =>
      m.proposalsPending(),
    );
    gauge('etcd_debugging_mvcc_keys_total', 'Total number of keys.', () => m.keys());
    // etcd 3.4 serves each of these twice, under etcd_ and (deprecated) etcd_debugging_.
    for (const ns of ['etcd', 'etcd_debugging']) {
      total(`${ns}_mvcc_put_total`, 'Total number of puts seen by this member.', () => m.applied().puts);
      total(
        `${ns}_mvcc_delete_total`,
        'Total number of deletes seen by this member.',
        () => m.applied().deletes,
      );
    }
    total('conclave_snapshots_saved_total', 'Snapshots of the store saved to disk.', () => c.snapshotsSaved);
    this.registry.registerMetric(c.walFsync);
    this.registry.registerMetric(c.backendCommit);
    // etcd labels sent bytes by the receiving peer ("To") and received bytes by the sender ("From").
    const peerCounter = (name: string, help: string, label: 'To' | 'From', pick: 'sent' | 'received') =>
      new client.Counter({
        name,
        help,
        labelNames: [label],
        registers: r,
        collect() {
          this.reset();
          for (const [peer, b] of m.peerBytes()) if (b[pick] > 0) this.inc({ [label]: peer }, b[pick]);
        },
      });
    peerCounter(
      'etcd_network_peer_sent_bytes_total',
      'The total number of bytes sent to peers.',
      'To',
      'sent',
    );
    peerCounter(
      'etcd_network_peer_received_bytes_total',
      'The total number of bytes received from peers.',
      'From',
      'received',
    );
  }

  /**
   * The counts of one gRPC method, made once when the handler is registered: the handler then
   * increments `byCode[code]` and `started` directly.
   */
  method(path: string, type: string): MethodCounts {
    let m = this.#methods.get(path);
    if (!m) {
      const [, service = '', method = ''] = /^\/([^/]+)\/(.+)$/.exec(path) ?? [];
      const t = {
        unary: 'unary',
        serverStream: 'server_stream',
        clientStream: 'client_stream',
        bidi: 'bidi_stream',
      }[type];
      m = { service, method, type: t ?? type, byCode: new Float64Array(17), started: 0 };
      this.#methods.set(path, m);
    }
    return m;
  }

  /**
   * Wraps every handler registered on `server` so its calls are counted by method and final status
   * code (grpc_server_started_total / handled_total, go-grpc-prometheus's names). Unary calls count
   * when answered; streams when they end: the code of the error that ended them, Canceled when the
   * client left, OK otherwise. One wrapped callback per unary call, no label lookups (the counts are
   * copied into the Prometheus counters at scrape time). Reads grpc-js's handler map, as the JSON
   * gateway does; call once, after every service is registered.
   */
  instrument(server: object): void {
    const handlers = (server as { handlers?: Map<string, { func: unknown; type: string }> }).handlers;
    if (!(handlers instanceof Map)) return;
    for (const [path, h] of handlers) {
      const m = this.method(path, h.type);
      const inner = h.func as (...a: unknown[]) => unknown;
      if (h.type === 'unary' || h.type === 'clientStream') {
        h.func = (call: unknown, cb: (err: { code?: number } | null, ...rest: unknown[]) => void) => {
          m.started++;
          return inner(call, (err: { code?: number } | null, ...rest: unknown[]) => {
            m.byCode[err ? codeOf(err.code) : 0]!++;
            cb(err, ...rest);
          });
        };
      } else {
        h.func = (call: StreamCall) => {
          m.started++;
          let done = false;
          const end = (code: number) => {
            if (done) return;
            done = true;
            m.byCode[code]!++;
          };
          call.once('error', (e: { code?: number } | undefined) => end(codeOf(e?.code)));
          call.once('cancelled', () => end(1));
          call.once('close', () => end(0));
          call.once('finish', () => end(0));
          return inner(call);
        };
      }
    }
  }

  healthCheck(ok: boolean): void {
    if (ok) this.#healthOk++;
    else this.#healthFailed++;
  }
}
