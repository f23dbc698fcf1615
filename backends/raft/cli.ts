/**
 * `conclave serve`: one Raft member in this process (its PID is the member's), with etcd's flag
 * names and meanings; each flag is also read from `CONCLAVE_<FLAG_NAME>` (e.g. `CONCLAVE_NAME`,
 * `CONCLAVE_INITIAL_CLUSTER`), as etcd reads `ETCD_*`. A flag given on the command line wins over
 * its environment variable.
 *
 * Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 for unknown or contradictory flags (one
 * line on stderr saying which and what to do), 1 when the member cannot start or fails.
 *
 * Identity: a new data dir takes its identity from `--initial-cluster`, `--initial-cluster-token`
 * and `--name` (server/ids.ts) and records it; a data dir with an identity ignores those flags
 * (as etcd does once its data dir exists) and says so in the log.
 *
 * Stopping (SIGTERM/SIGINT): a leader first hands leadership to its most up-to-date follower
 * (as etcd does on SIGTERM), then the member stops accepting client connections, fails its
 * pending requests `unavailable`, closes its storage (every WAL write is synced when it is made:
 * nothing acknowledged is left unsynced) and exits 0. A second signal while stopping exits 1 at once.
 */
import { realpathSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import pino from 'pino';
import { ConclaveError } from '../../src/errors.js';
import { defaultQuotaBytes, heapLimitBytes, nodeMaxOldSpaceMb } from './heap.js';
import { resolveRequestLimits } from './limits.js';
import { hasWal, Member, RequestKind } from './member.js';
import { decodeRecord, type MembershipRecord, removedMemberText, removedSelf } from './membership.js';
import { restoreSnapshot } from './restore.js';
import { opensslCiphers } from './server/cipher-suites.js';
import { conclaveVersion, startMetricsServer } from './server/gateway.js';
import { startClientServer } from './server/grpc.js';
import {
  bootstrapIdentity,
  defaultClusterToken,
  hexId,
  type Identity,
  normalizeUrl,
  parseInitialCluster,
  readIdentity,
  writeIdentity,
} from './server/ids.js';
import { JwtTokens, parseJwtSpec } from './server/jwt.js';
import { ServerMetrics } from './server/metrics.js';
import {
  checkTlsFlags,
  peerTls,
  type TlsFlags,
  TlsMaterial,
  tlsHandshakeTimeoutMsDefault,
} from './server/tls.js';
import { discoverRequest, type PeerTls } from './transport/tcp.js';

export { conclaveVersion } from './server/gateway.js';

/** The longest a stop may take (leadership transfer, then closing) before the process exits 1. */
export const shutdownTimeoutMs = 30_000;

interface FlagSpec {
  readonly name: string;
  readonly default: string;
  readonly help: string;
  /** A boolean flag: `--flag` alone means true, `--flag=false` turns it off (Go's flag package). */
  readonly bool?: true;
}

/** Every flag of `conclave serve`, with etcd 3.4's defaults. */
export const serveFlags: readonly FlagSpec[] = [
  { name: 'name', default: 'default', help: 'Human-readable name for this member.' },
  {
    name: 'data-dir',
    default: '<name>.conclave',
    help: 'Path to the data directory (WAL, snapshots, identity).',
  },
  {
    name: 'listen-client-urls',
    default: 'http://localhost:2379',
    help: 'List of URLs to listen on for client traffic.',
  },
  {
    name: 'advertise-client-urls',
    default: 'http://localhost:2379',
    help: "This member's client URLs to advertise to the rest of the cluster (Cluster.MemberList).",
  },
  {
    name: 'listen-metrics-urls',
    default: '',
    help: 'List of additional URLs to listen on that will respond to both the /metrics and /health endpoints.',
  },
  {
    name: 'listen-peer-urls',
    default: 'http://localhost:2380',
    help: 'List of URLs to listen on for peer traffic (one scheme for all).',
  },
  {
    name: 'initial-advertise-peer-urls',
    default: 'http://localhost:2380',
    help: "This member's peer URLs as --initial-cluster lists them.",
  },
  {
    name: 'initial-cluster',
    default: 'default=http://localhost:2380',
    help: 'Initial cluster configuration for bootstrapping: name=peer-url,...',
  },
  {
    name: 'initial-cluster-state',
    default: 'new',
    help: "Initial cluster state ('new' or 'existing': join a running cluster this member was added to with etcdctl member add).",
  },
  {
    name: 'strict-reconfig-check',
    default: 'true',
    help: 'Reject reconfiguration requests that would cause quorum loss.',
  },
  {
    name: 'force-new-cluster',
    default: 'false',
    bool: true,
    help: 'Force to create a new one-member cluster from this data dir (its data kept; the other members removed).',
  },
  {
    name: 'initial-cluster-token',
    default: defaultClusterToken,
    help: 'Initial cluster token (member and cluster IDs derive from it and the peer URLs).',
  },
  // TLS (etcd's names and meanings; server/tls.ts).
  { name: 'cert-file', default: '', help: 'Path to the client server TLS cert file.' },
  { name: 'key-file', default: '', help: 'Path to the client server TLS key file.' },
  {
    name: 'client-cert-auth',
    default: 'false',
    bool: true,
    help: 'Enable client cert authentication (a certificate signed by --trusted-ca-file is required).',
  },
  { name: 'client-crl-file', default: '', help: 'Path to the client certificate revocation list file.' },
  { name: 'trusted-ca-file', default: '', help: 'Path to the client server TLS trusted CA cert file.' },
  {
    name: 'auto-tls',
    default: 'false',
    bool: true,
    help: 'Client TLS using a self-signed certificate made with openssl (encrypts only; for tests).',
  },
  { name: 'peer-cert-file', default: '', help: 'Path to the peer server TLS cert file.' },
  { name: 'peer-key-file', default: '', help: 'Path to the peer server TLS key file.' },
  {
    name: 'peer-client-cert-auth',
    default: 'false',
    bool: true,
    help: 'Enable peer client cert authentication.',
  },
  { name: 'peer-trusted-ca-file', default: '', help: 'Path to the peer server TLS trusted CA file.' },
  {
    name: 'peer-cert-allowed-cn',
    default: '',
    help: 'Allowed CN for inter-peer authentication (needs --peer-client-cert-auth).',
  },
  { name: 'peer-crl-file', default: '', help: 'Path to the peer certificate revocation list file.' },
  {
    name: 'cipher-suites',
    default: '',
    help: "Comma-separated TLS 1.2 cipher suites (Go's names) for client and peer URLs; empty: Node's defaults.",
  },
  {
    name: 'peer-auto-tls',
    default: 'false',
    bool: true,
    help: 'Peer TLS using a self-signed certificate made with openssl (encrypts only; for tests).',
  },
  {
    name: 'auth-token',
    default: 'simple',
    help: "Auth token type: 'simple', or etcd's JWT tokens: 'jwt,sign-method=RS256,priv-key=<file>,pub-key=<file>[,ttl=5m]' (RS/PS/ES/HS 256/384/512; pub-key alone: verify only).",
  },
  {
    name: 'auth-token-ttl',
    default: '300',
    help: 'Seconds a simple auth token lives after its last use.',
  },
  {
    name: 'tls-handshake-timeout',
    default: String(tlsHandshakeTimeoutMsDefault),
    help: 'Milliseconds a TLS handshake on a client or peer URL may take before it is closed (Conclave only).',
  },
  { name: 'heartbeat-interval', default: '100', help: 'Time (in milliseconds) of a heartbeat interval.' },
  { name: 'election-timeout', default: '1000', help: 'Time (in milliseconds) for an election to timeout.' },
  {
    name: 'snapshot-count',
    default: '100000',
    help: 'Number of committed transactions to trigger a snapshot to disk.',
  },
  {
    name: 'max-request-bytes',
    default: '1572864',
    help: 'Maximum client request size in bytes the server will accept.',
  },
  { name: 'max-txn-ops', default: '128', help: 'Maximum number of operations permitted in a transaction.' },
  {
    name: 'max-concurrent-streams',
    default: '1024',
    help: 'Maximum concurrent HTTP/2 streams (calls) each client connection may open at a time (etcd: unbounded by default; here 1024).',
  },
  {
    name: 'quota-backend-bytes',
    default: '0',
    help: 'Raise a NOSPACE alarm and refuse writes that grow the store once its size (Status "db size": the encoded snapshot plus the entries applied since) exceeds the quota (0: an eighth of the V8 heap limit, at most 2 GiB).',
  },
  {
    name: 'max-old-space-size',
    default: '',
    help: "The member's V8 heap limit in MiB (node's --max-old-space-size; the store lives in the heap). bin/conclave.js starts the member in a node process with it; `node --max-old-space-size=N bin/conclave.js serve` keeps one process. Default: node's.",
  },
  {
    name: 'auto-compaction-mode',
    default: 'periodic',
    help: "Interpret 'auto-compaction-retention' one of: periodic|revision. 'periodic' for duration based retention, 'revision' for revision number based retention.",
  },
  {
    name: 'auto-compaction-retention',
    default: '0',
    help: 'Auto compaction retention for mvcc key value store. 0 means disable auto compaction (periodic: a duration such as 1h or 30m, or a number of hours; revision: a number of revisions).',
  },
  {
    name: 'log-level',
    default: 'info',
    help: "Log level: 'debug', 'info', 'warn', 'error', 'panic', or 'fatal'.",
  },
];

/**
 * etcd 3.4 flags that change behaviour and that `conclave serve` does not serve: refused (exit 2)
 * with the reason, never accepted and ignored.
 */
export const etcdFlagsNotServed: Readonly<Record<string, string>> = {
  'enable-v2': "etcd's v2 API is not served (only the v3 API is)",
  'experimental-enable-v2v3': "etcd's v2 API is not served (only the v3 API is)",
  'experimental-initial-corrupt-check':
    'the start-up hash comparison with peers is not implemented (each member checks its own WAL and snapshot checksums)',
  'config-file': 'give the flags on the command line or as CONCLAVE_* environment variables',
};

export const envName = (flag: string) => `CONCLAVE_${flag.toUpperCase().replace(/-/g, '_')}`;

/** A command-line mistake: printed as one line, exit code 2. */
export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export interface ServeConfig {
  readonly name: string;
  readonly dataDir: string;
  readonly listenClientUrls: readonly string[];
  readonly advertiseClientUrls: readonly string[];
  /** `--listen-metrics-urls`: extra URLs serving only GET /metrics and GET /health (none by default). */
  readonly listenMetricsUrls: readonly string[];
  /** The first of `--listen-peer-urls` (its scheme is every peer URL's). */
  readonly listenPeerUrl: string;
  /** Every `--listen-peer-urls` URL: the member accepts peer connections on each. */
  readonly listenPeerUrls: readonly string[];
  readonly initialAdvertisePeerUrls: readonly string[];
  readonly initialCluster: string;
  readonly initialClusterState: 'new' | 'existing';
  readonly initialClusterToken: string;
  readonly strictReconfigCheck: boolean;
  /** etcd's --force-new-cluster. */
  readonly forceNewCluster: boolean;
  readonly heartbeatMs: number;
  readonly electionTimeoutMs: number;
  readonly snapshotCount: number;
  readonly maxRequestBytes: number;
  readonly maxTxnOps: number;
  readonly maxConcurrentStreams: number;
  /** `--quota-backend-bytes`, or (0) the default derived from the heap limit (heap.ts). */
  readonly quotaBackendBytes: number;
  /** The V8 heap limit this process runs with, bytes. */
  readonly heapLimitBytes: number;
  /** Auto-compaction: none, or keep `retention` ms (periodic) / revisions (revision) of history. */
  readonly autoCompaction?: { readonly mode: 'periodic' | 'revision'; readonly retention: number };
  readonly logLevel: 'debug' | 'info' | 'warn' | 'error' | 'fatal';
  /** TLS on the client URLs and on the peer URL (server/tls.ts). */
  readonly clientTls: TlsFlags;
  readonly peerTls: TlsFlags;
  readonly tlsHandshakeTimeoutMs: number;
  /** `--auth-token-ttl` (seconds). */
  readonly authTokenTtlSeconds: number;
  /** `--auth-token jwt,…`: JWT tokens instead of simple ones. */
  readonly authJwt?: JwtTokens;
  /** Flags that were set by an environment variable and overridden on the command line. */
  readonly shadowed: readonly string[];
}

function usage(flag: string, why: string): UsageError {
  return new UsageError(`conclave serve: --${flag}: ${why} (see conclave serve --help)`);
}

function positiveInt(flag: string, v: string, min = 1): number {
  if (!/^\d+$/.test(v) || Number(v) < min || !Number.isSafeInteger(Number(v)))
    throw usage(flag, `"${v}" is not an integer >= ${min}`);
  return Number(v);
}

/**
 * `--max-old-space-size` can only take effect when node starts: bin/conclave.js starts node with
 * it. Here it must already be in effect (node's own flag or NODE_OPTIONS says the same value),
 * else the member would run with another heap than asked: exit 2 saying how to pass it.
 */
function checkHeapFlag(v: string): number {
  if (v !== '') {
    const mb = positiveInt('max-old-space-size', v, 16);
    const running = nodeMaxOldSpaceMb();
    if (running !== mb)
      throw usage(
        'max-old-space-size',
        `${mb} MiB is not this process's heap limit (node was started with ${running === undefined ? "node's default" : `${running} MiB`}); start the member through bin/conclave.js, which passes it to node, or run node --max-old-space-size=${mb} yourself`,
      );
  }
  return heapLimitBytes();
}

function urlList(flag: string, v: string): string[] {
  const urls = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  if (urls.length === 0) throw usage(flag, 'needs at least one URL');
  try {
    return urls.map((u) => normalizeUrl(u, `--${flag}`));
  } catch (err) {
    throw new UsageError(`conclave serve: ${(err as Error).message} (see conclave serve --help)`);
  }
}

/** Go duration units `--auto-compaction-retention` accepts, in ms. */
const durationUnits: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** etcd's `--auto-compaction-mode` and `--auto-compaction-retention` (0: off). */
export function autoCompactionOf(
  mode: string,
  retention: string,
): { autoCompaction?: { mode: 'periodic' | 'revision'; retention: number } } {
  if (mode !== 'periodic' && mode !== 'revision')
    throw usage('auto-compaction-mode', `"${mode}" is not periodic or revision`);
  if (mode === 'revision') {
    const n = positiveInt('auto-compaction-retention', retention, 0);
    return n === 0 ? {} : { autoCompaction: { mode, retention: n } };
  }
  // periodic: a number of hours (etcd's older form) or a Go duration such as 1h30m or 10s.
  let ms: number;
  if (/^\d+(\.\d+)?$/.test(retention)) ms = Number(retention) * 3_600_000;
  else {
    const parts = [...retention.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)];
    if (parts.length === 0 || parts.map((p) => p[0]).join('') !== retention)
      throw usage(
        'auto-compaction-retention',
        `"${retention}" is not a duration (e.g. 1h, 30m, 10s) or a number of hours`,
      );
    ms = parts.reduce((n, p) => n + Number(p[1]) * durationUnits[p[2]!]!, 0);
  }
  return ms === 0 ? {} : { autoCompaction: { mode, retention: Math.round(ms) } };
}

/**
 * Parses `serve`'s arguments (after the word `serve`) and the environment. Accepts `--flag value`,
 * `--flag=value` and Go's single-dash `-flag`. Throws `UsageError` for anything unknown,
 * malformed or contradictory.
 */
export function parseServeArgs(args: readonly string[], env: NodeJS.ProcessEnv = process.env): ServeConfig {
  const known = new Map(serveFlags.map((f) => [f.name, f]));
  const given = new Map<string, string>();
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const m = /^--?([a-z][a-z0-9-]*)(?:=(.*))?$/s.exec(a);
    if (!m)
      throw new UsageError(
        `conclave serve: unexpected argument "${a}" (flags only; see conclave serve --help)`,
      );
    const name = m[1]!;
    if (!known.has(name)) {
      const why = etcdFlagsNotServed[name];
      throw new UsageError(
        why
          ? `conclave serve: etcd's flag --${name} is not supported: ${why}`
          : `conclave serve: unknown flag --${name} (see conclave serve --help)`,
      );
    }
    let value = m[2];
    if (value === undefined && known.get(name)!.bool) value = 'true';
    if (value === undefined) {
      value = args[++i];
      if (value === undefined || /^--?[a-z]/.test(value)) throw usage(name, 'needs a value');
    }
    // Go's flag package (etcd) takes a repeated flag, the last one winning; here a repeat must say
    // the same (etcd's e2e harness repeats --client-cert-auth), a contradiction is refused.
    if (given.has(name) && given.get(name) !== value) throw usage(name, 'given twice with different values');
    given.set(name, value);
  }
  const shadowed: string[] = [];
  const get = (name: string): string => {
    const e = env[envName(name)];
    if (given.has(name)) {
      if (e !== undefined) shadowed.push(name);
      return given.get(name)!;
    }
    if (e !== undefined) return e;
    return known.get(name)!.default;
  };
  const name = get('name');
  if (name === '') throw usage('name', 'must not be empty');
  const dataDir =
    given.has('data-dir') || env[envName('data-dir')] !== undefined ? get('data-dir') : `${name}.conclave`;
  if (dataDir === '') throw usage('data-dir', 'must not be empty');
  const state = get('initial-cluster-state');
  if (state !== 'new' && state !== 'existing')
    throw usage('initial-cluster-state', `"${state}" is not 'new' or 'existing'`);
  const strict = get('strict-reconfig-check');
  if (strict !== 'true' && strict !== 'false')
    throw usage('strict-reconfig-check', `"${strict}" is not true or false`);
  const heartbeatMs = positiveInt('heartbeat-interval', get('heartbeat-interval'));
  const electionTimeoutMs = positiveInt('election-timeout', get('election-timeout'));
  // etcd: "--election-timeout should be at least as 5 times as --heartbeat-interval".
  if (electionTimeoutMs < 5 * heartbeatMs)
    throw usage(
      'election-timeout',
      `${electionTimeoutMs} ms is less than 5 × --heartbeat-interval (${heartbeatMs} ms); raise it or lower the heartbeat`,
    );
  if (electionTimeoutMs > 50_000)
    throw usage('election-timeout', 'is longer than 50000 ms (etcd refuses it too)');
  const level = get('log-level');
  const levels = {
    debug: 'debug',
    info: 'info',
    warn: 'warn',
    error: 'error',
    panic: 'fatal',
    fatal: 'fatal',
  } as const;
  if (!(level in levels))
    throw usage('log-level', `"${level}" is not one of ${Object.keys(levels).join(', ')}`);
  const bool = (flag: string): boolean => {
    const v = get(flag);
    // Go's strconv.ParseBool, which etcd's flags use.
    if (['1', 't', 'T', 'true', 'TRUE', 'True'].includes(v)) return true;
    if (['0', 'f', 'F', 'false', 'FALSE', 'False'].includes(v)) return false;
    throw usage(flag, `"${v}" is not true or false`);
  };
  const listenPeer = urlList('listen-peer-urls', get('listen-peer-urls'));
  const maxRequestBytes = positiveInt('max-request-bytes', get('max-request-bytes'));
  const maxTxnOps = positiveInt('max-txn-ops', get('max-txn-ops'));
  try {
    resolveRequestLimits({ maxRequestBytes, maxTxnOps });
  } catch (err) {
    throw new UsageError(`conclave serve: ${(err as Error).message} (see conclave serve --help)`);
  }
  const listenClientUrls = urlList('listen-client-urls', get('listen-client-urls'));
  const initialAdvertisePeerUrls = urlList('initial-advertise-peer-urls', get('initial-advertise-peer-urls'));
  let ciphers: string;
  try {
    ciphers = opensslCiphers(get('cipher-suites'));
  } catch (err) {
    throw usage('cipher-suites', (err as Error).message);
  }
  const clientTls: TlsFlags = {
    ...(ciphers ? { ciphers } : {}),
    certFile: get('cert-file'),
    keyFile: get('key-file'),
    trustedCaFile: get('trusted-ca-file'),
    clientCertAuth: bool('client-cert-auth'),
    autoTls: bool('auto-tls'),
    crlFile: get('client-crl-file'),
  };
  const peerTls: TlsFlags = {
    ...(ciphers ? { ciphers } : {}),
    certFile: get('peer-cert-file'),
    keyFile: get('peer-key-file'),
    trustedCaFile: get('peer-trusted-ca-file'),
    clientCertAuth: bool('peer-client-cert-auth'),
    autoTls: bool('peer-auto-tls'),
    crlFile: get('peer-crl-file'),
    allowedCn: get('peer-cert-allowed-cn'),
  };
  let authJwt: JwtTokens | undefined;
  if (get('auth-token').startsWith('jwt')) {
    try {
      authJwt = new JwtTokens(parseJwtSpec(get('auth-token')));
    } catch (err) {
      throw usage('auth-token', (err as Error).message);
    }
  } else if (get('auth-token') !== 'simple')
    throw usage('auth-token', `"${get('auth-token')}": 'simple' or 'jwt,…'`);
  const tlsProblem =
    checkTlsFlags('client', clientTls, listenClientUrls) ??
    checkTlsFlags('peer', peerTls, [...listenPeer, ...initialAdvertisePeerUrls]);
  if (tlsProblem !== undefined)
    throw new UsageError(`conclave serve: ${tlsProblem} (see conclave serve --help)`);
  return {
    name,
    dataDir,
    listenClientUrls,
    advertiseClientUrls: urlList('advertise-client-urls', get('advertise-client-urls')),
    listenMetricsUrls:
      get('listen-metrics-urls').trim() === ''
        ? []
        : urlList('listen-metrics-urls', get('listen-metrics-urls')),
    listenPeerUrl: listenPeer[0]!,
    listenPeerUrls: listenPeer,
    initialAdvertisePeerUrls,
    initialCluster: get('initial-cluster'),
    initialClusterState: state,
    initialClusterToken: get('initial-cluster-token'),
    strictReconfigCheck: strict === 'true',
    forceNewCluster: bool('force-new-cluster'),
    heartbeatMs,
    electionTimeoutMs,
    snapshotCount: positiveInt('snapshot-count', get('snapshot-count')),
    maxRequestBytes,
    maxTxnOps,
    // etcd's flag is a uint32.
    maxConcurrentStreams: Math.min(
      positiveInt('max-concurrent-streams', get('max-concurrent-streams')),
      2 ** 32 - 1,
    ),
    quotaBackendBytes:
      positiveInt('quota-backend-bytes', get('quota-backend-bytes'), 0) || defaultQuotaBytes(),
    heapLimitBytes: checkHeapFlag(get('max-old-space-size')),
    ...autoCompactionOf(get('auto-compaction-mode'), get('auto-compaction-retention')),
    logLevel: levels[level as keyof typeof levels],
    clientTls,
    peerTls,
    tlsHandshakeTimeoutMs: positiveInt('tls-handshake-timeout', get('tls-handshake-timeout')),
    authTokenTtlSeconds: positiveInt('auth-token-ttl', get('auth-token-ttl')),
    ...(authJwt ? { authJwt } : {}),
    shadowed,
  };
}

/**
 * The identity to start with: the data dir's own, or (a new data dir) one derived from the flags,
 * which must agree with each other. Throws `UsageError` for contradictions.
 */
export async function resolveIdentity(
  c: ServeConfig,
  log: pino.Logger,
  dialTls?: PeerTls,
): Promise<Identity> {
  const recorded = await readIdentity(c.dataDir);
  if (recorded) {
    if (recorded.name !== c.name)
      log.warn(
        { recorded: recorded.name, flag: c.name },
        'the data dir belongs to another --name; using its identity',
      );
    log.info(
      { member: hexId(recorded.memberId), cluster: hexId(recorded.clusterId) },
      'the data dir has an identity: --initial-cluster, --initial-cluster-token and --initial-cluster-state are ignored',
    );
    // It applied its own removal before it stopped (as a leader or a follower that received the
    // commit): refused here, from its own record, whatever its peers (if any are up) would answer.
    if (removedSelf(recorded))
      throw new ConclaveError('conflict', removedMemberText, {
        details: { removed: true, member: hexId(recorded.memberId), cluster: hexId(recorded.clusterId) },
      });
    // This start's client URLs are what the member advertises now (etcd publishes them at start).
    const self = recorded.members.find((m) => m.id === recorded.memberId)!;
    self.clientUrls = [...c.advertiseClientUrls];
    await writeIdentity(c.dataDir, recorded);
    return recorded;
  }
  if (await hasWal(c.dataDir))
    throw new ConclaveError(
      'corrupt',
      `${c.dataDir} holds a WAL but no identity (member.json): restore it, or start from an empty data dir`,
    );
  let cluster: Map<string, string[]>;
  try {
    cluster = parseInitialCluster(c.initialCluster);
  } catch (err) {
    throw new UsageError(`conclave serve: ${(err as Error).message} (see conclave serve --help)`);
  }
  const listed = cluster.get(c.name);
  if (!listed)
    throw new UsageError(
      `conclave serve: --initial-cluster has no member named "${c.name}" (--name); it lists ${[...cluster.keys()].join(', ')}`,
    );
  const adv = [...c.initialAdvertisePeerUrls].sort().join(',');
  if ([...listed].sort().join(',') !== adv)
    throw new UsageError(
      `conclave serve: --initial-advertise-peer-urls (${adv}) does not match --initial-cluster's URLs for "${c.name}" (${listed.join(',')})`,
    );
  if (c.initialClusterState === 'existing') {
    const id = await joinIdentity(c, cluster, log, dialTls);
    await writeIdentity(c.dataDir, id);
    return id;
  }
  try {
    const id = bootstrapIdentity({
      name: c.name,
      initialCluster: cluster,
      token: c.initialClusterToken,
      clientUrls: c.advertiseClientUrls,
    });
    await writeIdentity(c.dataDir, id);
    return id;
  } catch (err) {
    if (ConclaveError.is(err, 'invalid-argument'))
      throw new UsageError(`conclave serve: ${err.message} (see conclave serve --help)`);
    throw err;
  }
}

/** How long a joining member tries the peers of --initial-cluster for the membership. */
export const joinDiscoveryMs = 30_000;

/**
 * The identity of a member joining a running cluster (`--initial-cluster-state existing`), as etcd
 * builds it from a peer's member list: the cluster ID and members come from a running member
 * (asked on its peer URL), this member is the one whose peer URLs are
 * `--initial-advertise-peer-urls`, and `--initial-cluster` must list the cluster's members (etcd's
 * ValidateClusterAndAssignIDs). Throws `UsageError` saying what does not match.
 */
async function joinIdentity(
  c: ServeConfig,
  cluster: Map<string, string[]>,
  log: pino.Logger,
  dialTls: PeerTls | undefined,
): Promise<Identity> {
  const own = [...c.initialAdvertisePeerUrls].sort().join(',');
  const others = [...cluster]
    .filter(([name]) => name !== c.name)
    .flatMap(([, urls]) => urls)
    .filter((u) => !c.initialAdvertisePeerUrls.includes(u));
  if (others.length === 0)
    throw new UsageError(
      'conclave serve: --initial-cluster-state existing: --initial-cluster lists no other member to join through',
    );
  // The peers are asked on their peer URLs, over TLS when those are https:// (with this member's
  // peer certificate: a cluster with --peer-client-cert-auth requires one), so every URL must use
  // this member's scheme, as openPeerTls checks of the whole membership once it is known.
  for (const [name, urls] of cluster) for (const u of urls) checkPeerScheme(c, name, u);
  let record: MembershipRecord | undefined;
  const errors: string[] = [];
  const until = performance.now() + joinDiscoveryMs;
  while (!record && performance.now() < until) {
    for (const u of others) {
      try {
        const r = await discoverRequest(hostPort(u), RequestKind.Members, 3000, dialTls);
        record = decodeRecord(r.body);
        break;
      } catch (err) {
        errors.push(`${u}: ${(err as Error).message}`);
      }
    }
    if (!record) await new Promise((r) => setTimeout(r, 500));
  }
  if (!record)
    throw new ConclaveError(
      'unavailable',
      `--initial-cluster-state existing: no member of --initial-cluster answered (${errors.slice(-3).join('; ')}); start it when the cluster runs`,
    );
  const self = record.members.find((m) => [...m.peerUrls].sort().join(',') === own);
  if (!self)
    throw new UsageError(
      `conclave serve: cluster ${hexId(record.clusterId)} has no member with peer URLs ${own}: add it first (etcdctl member add ${c.name} --peer-urls=${own}), then start it with --initial-cluster-state existing`,
    );
  if (self.name !== '' && self.name !== c.name)
    throw new UsageError(
      `conclave serve: member ${hexId(self.id)} (peer URLs ${own}) has already been started as "${self.name}"; its data dir is needed to restart it`,
    );
  if (self.name !== '')
    throw new UsageError(
      `conclave serve: member ${hexId(self.id)} has already been bootstrapped; restart it on its data dir, or remove it and add it again`,
    );
  // --initial-cluster must describe the cluster as it is (etcd: "member count is unequal").
  const listed = [...cluster.values()].map((urls) => [...urls].sort().join(',')).sort();
  const actual = record.members.map((m) => [...m.peerUrls].sort().join(',')).sort();
  if (listed.join(' ') !== actual.join(' '))
    throw new UsageError(
      `conclave serve: --initial-cluster does not match cluster ${hexId(record.clusterId)}: it lists ${listed.join(' ')}, the cluster has ${actual.join(' ')} (etcdctl member add prints the value to use)`,
    );
  log.info(
    { member: hexId(self.id), cluster: hexId(record.clusterId), learner: self.isLearner === true },
    'joining a running cluster',
  );
  const members = record.members.map((m) =>
    m.id === self.id ? { ...m, name: c.name, clientUrls: [...c.advertiseClientUrls] } : { ...m },
  );
  return {
    clusterId: record.clusterId,
    memberId: self.id,
    nodeId: self.nodeId,
    name: c.name,
    token: c.initialClusterToken,
    members,
    removed: [...record.removed],
  };
}

function helpText(): string {
  const lines = [
    'Usage: conclave serve [flags]',
    '',
    'Starts one member of a Conclave Raft cluster in this process. It speaks etcd v3 gRPC on its',
    'client URLs and the Conclave peer protocol on its peer URL. Each flag can also be set with the',
    'environment variable CONCLAVE_<FLAG> (e.g. --initial-cluster -> CONCLAVE_INITIAL_CLUSTER).',
    '',
    'Flags:',
  ];
  for (const f of serveFlags) {
    lines.push(f.bool ? `  --${f.name} (default ${f.default})` : `  --${f.name} '${f.default}'`);
    lines.push(`      ${f.help} [env ${envName(f.name)}]`);
  }
  return lines.join('\n');
}

const topHelp = [
  'Usage: conclave <command> [flags]',
  '',
  'Commands:',
  '  serve      start one member of a Conclave cluster (conclave serve --help lists its flags)',
  '  snapshot restore <file> --data-dir D --name N --initial-cluster C --initial-cluster-token T',
  '             --initial-advertise-peer-urls U [--skip-hash-check]',
  '             a new member data dir from a file saved by etcdctl snapshot save (as etcdctl 3.4)',
  '',
  'Flags:',
  '  --help     show this help',
  '  --version  print the version',
  '',
  'conclave serve flags:',
  ...serveFlags.map((f) => `  --${f.name}`),
].join('\n');

/** `conclave snapshot restore <file> …` (backends/raft/restore.ts): exit 0, 2 on usage, 1 on failure. */
async function snapshotCommand(args: readonly string[]): Promise<number> {
  const [sub, file, ...rest] = args;
  const say = (code: number, line: string) => {
    (code === 0 ? process.stdout : process.stderr).write(`${line}\n`);
    return code;
  };
  if (sub !== 'restore' || file === undefined || file.startsWith('-'))
    return say(
      2,
      'conclave snapshot: usage: conclave snapshot restore <file> --data-dir … --name … --initial-cluster … --initial-cluster-token … --initial-advertise-peer-urls …',
    );
  const known = [
    'data-dir',
    'name',
    'initial-cluster',
    'initial-cluster-token',
    'initial-advertise-peer-urls',
    'skip-hash-check',
  ];
  const given = new Map<string, string>();
  for (let i = 0; i < rest.length; i++) {
    const m = /^--?([a-z-]+)(?:=(.*))?$/s.exec(rest[i]!);
    if (!m || !known.includes(m[1]!))
      return say(2, `conclave snapshot restore: unknown argument "${rest[i]}"`);
    let v = m[2];
    if (v === undefined) v = m[1] === 'skip-hash-check' ? 'true' : rest[++i];
    if (v === undefined) return say(2, `conclave snapshot restore: --${m[1]} needs a value`);
    given.set(m[1]!, v);
  }
  const name = given.get('name') ?? 'default';
  try {
    const { identity, revision } = await restoreSnapshot({
      file,
      dataDir: given.get('data-dir') ?? `${name}.etcd`,
      name,
      initialCluster: given.get('initial-cluster') ?? `${name}=http://localhost:2380`,
      initialClusterToken: given.get('initial-cluster-token') ?? defaultClusterToken,
      initialAdvertisePeerUrls: (given.get('initial-advertise-peer-urls') ?? 'http://localhost:2380')
        .split(',')
        .map((u) => u.trim()),
      skipHashCheck: given.get('skip-hash-check') === 'true',
    });
    return say(
      0,
      `restored snapshot (revision ${revision}) into ${given.get('data-dir') ?? `${name}.etcd`}: member ${hexId(identity.memberId)} of cluster ${hexId(identity.clusterId)}`,
    );
  } catch (err) {
    return say(
      ConclaveError.is(err, 'invalid-argument') ? 2 : 1,
      `conclave snapshot restore: ${(err as Error).message}`,
    );
  }
}

function hostPort(url: string): { host: string; port: number } {
  const u = new URL(url);
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port) };
}

/** Runs `conclave <args>`; resolves with the exit code once the command is done (serve: once stopped). */
export async function main(args: readonly string[]): Promise<number> {
  const [cmd, ...rest] = args;
  if (cmd === undefined || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    (cmd === undefined ? process.stderr : process.stdout).write(`${topHelp}\n`);
    return cmd === undefined ? 2 : 0;
  }
  if (cmd === '--version' || cmd === 'version') {
    process.stdout.write(`conclave ${conclaveVersion} (etcd API 3.4)\n`);
    return 0;
  }
  if (cmd === 'snapshot') return snapshotCommand(rest);
  if (cmd !== 'serve') {
    process.stderr.write(`conclave: unknown command "${cmd}" (see conclave --help)\n`);
    return 2;
  }
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${helpText()}\n`);
    return 0;
  }
  let config: ServeConfig;
  try {
    config = parseServeArgs(rest);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`${err.message}\n`);
      return 2;
    }
    throw err;
  }
  return serve(config);
}

async function serve(c: ServeConfig): Promise<number> {
  let exitRequested: ((code: number, why: string) => void) | undefined;
  let earlyExit: { code: number; why: string } | undefined;
  const log = pino(
    { level: c.logLevel, base: { name: c.name, pid: process.pid } },
    pino.destination({ dest: 2, sync: true }),
  );
  for (const f of c.shadowed)
    log.warn({ flag: f, env: envName(f) }, 'the command-line flag overrides its environment variable');
  let identity: Identity;
  let member: Member;
  let peerMaterial: TlsMaterial | undefined;
  try {
    // The peer TLS material first: a member joining an https:// cluster asks a peer for the
    // membership over TLS before it has an identity.
    peerMaterial = await openPeerTls(c, log);
    identity = await resolveIdentity(
      c,
      log,
      peerMaterial ? peerTls(peerMaterial, log, c.tlsHandshakeTimeoutMs) : undefined,
    );
    for (const m of identity.members) for (const u of m.peerUrls) checkPeerScheme(c, m.name, u);
    member = await Member.start({
      identity,
      dataDir: c.dataDir,
      listenPeer: hostPort(c.listenPeerUrl),
      listenPeerMore: c.listenPeerUrls.slice(1).map(hostPort),
      heartbeatMs: c.heartbeatMs,
      electionTimeoutMs: c.electionTimeoutMs,
      snapshotEntries: c.snapshotCount,
      limits: { maxRequestBytes: c.maxRequestBytes, maxTxnOps: c.maxTxnOps },
      log,
      ...(peerMaterial ? { peerTls: peerTls(peerMaterial, log, c.tlsHandshakeTimeoutMs) } : {}),
      clientCertAuth: c.clientTls.clientCertAuth,
      authTokenTtlSeconds: c.authTokenTtlSeconds,
      ...(c.authJwt ? { authJwt: c.authJwt } : {}),
      strictReconfigCheck: c.strictReconfigCheck,
      forceNewCluster: c.forceNewCluster,
      quotaBackendBytes: c.quotaBackendBytes,
      ...(c.autoCompaction ? { autoCompaction: c.autoCompaction } : {}),
      onExit: (code, why) => {
        if (exitRequested) exitRequested(code, why);
        else earlyExit ??= { code, why };
      },
    });
  } catch (err) {
    peerMaterial?.close();
    if (ConclaveError.is(err, 'invalid-argument')) {
      process.stderr.write(`conclave serve: ${err.message}\n`);
      return 2;
    }
    if (err instanceof UsageError) {
      process.stderr.write(`${err.message}\n`);
      return 2;
    }
    if (ConclaveError.is(err, 'conflict') && err.details?.removed === true) {
      log.error({ member: err.details.member, cluster: err.details.cluster }, err.message);
      return 1;
    }
    log.fatal({ err: err instanceof Error ? err.message : String(err) }, 'the member could not start');
    return 1;
  }
  const clients = await startClients(member, c, log);
  if (typeof clients === 'number') {
    await member.stop();
    return clients;
  }
  const ready = new AbortController();
  void announceReady(member, identity, c, log, ready.signal);
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) {
        log.warn({ signal }, 'second signal while stopping: exiting now');
        resolve(1);
        return;
      }
      stopping = true;
      ready.abort();
      log.info({ signal }, 'stopping');
      const timer = setTimeout(() => {
        log.error({ timeoutMs: shutdownTimeoutMs }, 'stopping took too long: exiting');
        resolve(1);
      }, shutdownTimeoutMs);
      timer.unref();
      void (async () => {
        try {
          const moved = await member.transferLeadership(2 * c.electionTimeoutMs + 1000);
          if (!moved) log.warn({}, 'leadership was not transferred before stopping');
          await clients.close();
          await member.stop();
          log.info({}, 'stopped');
          resolve(0);
        } catch (err) {
          log.error({ err: String(err) }, 'stopping failed');
          resolve(1);
        }
      })();
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
    // Logged only once the handlers above are in place: a harness (or an operator's script) that
    // signals the member as soon as it reads this line must get a clean stop, never the default
    // SIGTERM action.
    log.info(
      {
        member: hexId(identity.memberId),
        cluster: hexId(identity.clusterId),
        clientUrls: c.listenClientUrls,
        heapLimitBytes: c.heapLimitBytes,
        quotaBackendBytes: c.quotaBackendBytes,
      },
      'serving',
    );
    // Removed from the cluster, or refused by its peers: stop without handing over leadership.
    exitRequested = (code, why) => {
      if (stopping) return;
      stopping = true;
      log.warn({ reason: why, exitCode: code }, 'stopping: this member may not serve');
      void (async () => {
        try {
          await clients.close();
          await member.stop();
        } finally {
          resolve(code);
        }
      })();
    };
    if (earlyExit) exitRequested(earlyExit.code, earlyExit.why);
  });
}

/**
 * Every member's peer URLs use the scheme of this member's --listen-peer-urls: a member dials its
 * peers with its own TLS material (or none).
 */
function checkPeerScheme(c: ServeConfig, name: string, url: string): void {
  if (url.startsWith('https://') !== c.listenPeerUrl.startsWith('https://'))
    throw new UsageError(
      `conclave serve: member "${name}" has peer URL ${url} but --listen-peer-urls is ${c.listenPeerUrl}: every member's peer URLs use one scheme`,
    );
}

/** The peer TLS material when the peer URL is https:// (undefined for http://). */
async function openPeerTls(c: ServeConfig, log: pino.Logger): Promise<TlsMaterial | undefined> {
  if (!c.listenPeerUrl.startsWith('https://')) return undefined;
  return TlsMaterial.open({
    side: 'peer',
    flags: c.peerTls,
    dataDir: c.dataDir,
    hosts: [...c.listenPeerUrls, ...c.initialAdvertisePeerUrls].map((u) => hostPort(u).host),
    log,
  });
}

/**
 * Logs, once, the two events etcd logs when a member becomes usable, in etcd's words, because
 * operators and tools wait for them (etcd's own e2e harness starts a member and waits for a line
 * containing "enabled capabilities for version" and one containing "published"):
 * - "enabled capabilities for version 3.4": etcd logs it when the cluster version is known
 *   (capability.go, on applying the cluster version). All members of a Conclave cluster speak one
 *   API version (3.4); it is known once this member has a leader and is caught up with it.
 * - "published local member to cluster": etcd logs it when its publish proposal (name, client
 *   URLs) is applied, after which it serves clients. Here: the client URLs are listening, a
 *   linearizable read through this member has succeeded (a leader, a quorum, this member caught
 *   up), and its attributes were proposed through Raft and applied here (member.ts
 *   `publishAttributes`), so a client that connects now is served and every member that applied
 *   the entry lists this member's client URLs.
 * Retries every heartbeat until then, or until `signal` (the member stops). Keep other log lines
 * free of these words: a harness counts any line that contains them.
 */
async function announceReady(
  member: Member,
  identity: Identity,
  c: ServeConfig,
  log: pino.Logger,
  signal: AbortSignal,
): Promise<void> {
  while (!signal.aborted && !member.stopped) {
    try {
      await member.kv.range(new Uint8Array([0]), {
        limit: 1,
        keysOnly: true,
        signal: AbortSignal.any([signal, AbortSignal.timeout(2 * c.electionTimeoutMs + 1000)]),
      });
      break;
    } catch {
      await new Promise((r) => setTimeout(r, c.heartbeatMs));
    }
  }
  if (signal.aborted || member.stopped) return;
  log.info({ clusterVersion: '3.4' }, 'enabled capabilities for version 3.4');
  // etcd logs "published" once its attributes proposal applied: from then on every member that
  // applied it lists this member's client URLs (member remove right after start reads them).
  if (!(await member.publishAttributes(signal))) return;
  log.info(
    {
      localMember: { name: identity.name, clientURLs: c.advertiseClientUrls },
      member: hexId(identity.memberId),
      cluster: hexId(identity.clusterId),
    },
    'published local member to cluster: ready to serve client requests',
  );
}

/** The client API servers on `--listen-client-urls`; a number is an exit code (could not start). */
async function startClients(
  member: Member,
  c: ServeConfig,
  log: pino.Logger,
): Promise<{ close(): Promise<void> } | number> {
  const servers: { close(): Promise<void> }[] = [];
  let material: TlsMaterial | undefined;
  const closeAll = async () => {
    await Promise.all(servers.map((s) => s.close()));
    material?.close();
  };
  if (c.listenClientUrls.some((u) => u.startsWith('https://'))) {
    try {
      material = await TlsMaterial.open({
        side: 'client',
        flags: c.clientTls,
        dataDir: c.dataDir,
        hosts: c.listenClientUrls.map((u) => hostPort(u).host),
        log,
      });
    } catch (err) {
      process.stderr.write(`conclave serve: ${(err as Error).message}\n`);
      return 2;
    }
  }
  // One registry for the member: every client URL and metrics URL serves the same metrics.
  const metrics = new ServerMetrics(member.info, member.metricsSource());
  for (const url of c.listenMetricsUrls) {
    try {
      const { host, port } = hostPort(url);
      servers.push(await startMetricsServer(host, port, member, metrics));
    } catch (err) {
      log.fatal({ url, err: err instanceof Error ? err.message : String(err) }, 'cannot listen for metrics');
      await closeAll();
      return 1;
    }
  }
  for (const url of c.listenClientUrls) {
    try {
      servers.push(
        await startClientServer(member, {
          ...hostPort(url),
          ...(url.startsWith('https://') && material
            ? { tls: { material, handshakeTimeoutMs: c.tlsHandshakeTimeoutMs, log } }
            : {}),
          metrics,
          // etcd notices a leaderless member once per election timeout.
          leaderCheckIntervalMs: c.electionTimeoutMs,
          maxConcurrentStreams: c.maxConcurrentStreams,
        }),
      );
    } catch (err) {
      log.fatal({ url, err: err instanceof Error ? err.message : String(err) }, 'cannot listen for clients');
      await closeAll();
      return 1;
    }
  }
  return { close: closeAll };
}

/** True when this module is the process's entry (`node --import tsx backends/raft/cli.ts …`). */
function isEntry(): boolean {
  const entry = process.argv[1];
  if (!entry) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(entry)).href;
  } catch {
    return false;
  }
}

if (isEntry()) {
  main(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`conclave: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
