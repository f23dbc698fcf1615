/**
 * `conclave serve` clusters of real processes for tests, mirroring etcd.ts: members on free
 * loopback ports with temporary data dirs, each a `node … cli serve` process (the built CLI when
 * dist/ is up to date, else `node --import tsx backends/raft/cli.ts`; CONCLAVE_SERVED_SOURCES=1
 * forces the sources), so the child's PID is the member's: signals reach the member itself,
 * stopped by PID. `stop` sends SIGTERM and reports the exit code, `kill` sends SIGKILL, `restart`
 * starts a member again on its data dir.
 *
 * Each member's stderr (pino JSON lines) is kept (bounded) for assertions and failure reports.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, minTtlFor } from './etcd.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));
/** Log lines kept per member process (oldest dropped first). */
export const logLinesMax = 2000;

/** The newest modification time of the sources a member runs (ms). */
function newestSourceMs(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestSourceMs(p));
    else if (e.name.endsWith('.ts') || e.name.endsWith('.proto'))
      newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

/**
 * How a member process is started: the built CLI when dist/ is newer than every source (a process
 * starts in about a third of the time: nothing to transpile), else the sources through tsx. Either
 * way the child is `node` running the CLI itself, so its PID is the member's.
 */
function memberEntry(): string[] {
  const dist = join(root, 'dist/backends/raft/cli.js');
  if (
    process.env.CONCLAVE_SERVED_SOURCES !== '1' &&
    existsSync(dist) &&
    statSync(dist).mtimeMs >=
      // Every source tree the server imports (it runs recipes inside for etcd's Lock/Election).
      Math.max(...['src', 'backends', 'recipes'].map((d) => newestSourceMs(join(root, d))))
  )
    return [dist];
  return ['--import', 'tsx', join(root, 'backends/raft/cli.ts')];
}

const children = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of children) c.kill('SIGKILL');
});

export interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly [k: string]: unknown;
}

export interface ServedMember {
  readonly name: string;
  readonly clientPort: number;
  readonly peerPort: number;
  /** The peer port other members dial and the member advertises (= peerPort unless `advertisePeerPorts`). */
  readonly advertisedPeerPort: number;
  readonly dataDir: string;
  /** `host:port` of the client URL. */
  readonly endpoint: string;
  /** The running process, if any. */
  proc: ChildProcess | undefined;
  /** Log lines of every run of this member (across restarts), the newest `logLinesMax`. */
  readonly logs: LogLine[];
  /** Lines dropped from the front of `logs` so far (absolute line n is `logs[n - droppedLogs]`). */
  droppedLogs: number;
  /** Non-JSON stderr output (crashes), bounded. */
  stderr: string;
}

export interface StartServedOptions {
  members?: number;
  heartbeatMs?: number;
  electionTimeoutMs?: number;
  token?: string;
  /** Extra flags for every member. */
  extraArgs?: string[];
  /** Wait until every member logs a leader (default true). */
  waitLeader?: boolean;
  /** URL schemes of the client and peer URLs (default http; https needs TLS flags: `memberArgs`). */
  clientScheme?: 'http' | 'https';
  peerScheme?: 'http' | 'https';
  /** Extra flags for member `i` (e.g. its own certificate). */
  memberArgs?: (i: number) => string[];
  /**
   * Give each member a separate advertised peer port (`advertisedPeerPort`, in --initial-cluster and
   * --initial-advertise-peer-urls) while it listens on `peerPort`: something in between (a proxy
   * that `beforeStart` starts) carries the peer traffic. Default false.
   */
  advertisePeerPorts?: boolean;
  /** Called once the ports are chosen, before any member starts (e.g. to start peer proxies). */
  beforeStart?: (c: ServedCluster) => Promise<void>;
  /** The node arguments that run the CLI (default: the built CLI or the sources through tsx). */
  entry?: string[];
}

type ClusterConfig = Required<
  Omit<StartServedOptions, 'members' | 'advertisePeerPorts' | 'beforeStart' | 'entry'>
>;

export class ServedCluster {
  readonly members: ServedMember[];
  readonly dir: string;
  readonly minTtlSeconds: number;
  readonly #o: ClusterConfig;
  readonly #initialCluster: string;
  readonly #entry: string[];

  constructor(dir: string, members: ServedMember[], o: ClusterConfig, entry: string[] = memberEntry()) {
    this.dir = dir;
    this.members = members;
    this.#o = o;
    this.#entry = entry;
    this.minTtlSeconds = minTtlFor(o.heartbeatMs, o.electionTimeoutMs);
    this.#initialCluster = members
      .map((m) => `${m.name}=${o.peerScheme}://127.0.0.1:${m.advertisedPeerPort}`)
      .join(',');
  }

  /** `--initial-cluster-token` of this cluster (member IDs derive from it). */
  get token(): string {
    return this.#o.token;
  }

  get endpoints(): string[] {
    return this.members.map((m) => m.endpoint);
  }

  /** PIDs of the running members. */
  pids(): number[] {
    return this.members.flatMap((m) =>
      m.proc?.pid !== undefined && m.proc.exitCode === null ? [m.proc.pid] : [],
    );
  }

  args(m: ServedMember, extra: string[] = [], initialCluster = this.#initialCluster): string[] {
    return [
      ...this.#entry,
      'serve',
      `--name=${m.name}`,
      `--data-dir=${m.dataDir}`,
      `--listen-client-urls=${this.#o.clientScheme}://127.0.0.1:${m.clientPort}`,
      `--advertise-client-urls=${this.#o.clientScheme}://127.0.0.1:${m.clientPort}`,
      `--listen-peer-urls=${this.#o.peerScheme}://127.0.0.1:${m.peerPort}`,
      `--initial-advertise-peer-urls=${this.#o.peerScheme}://127.0.0.1:${m.advertisedPeerPort}`,
      `--initial-cluster=${initialCluster}`,
      `--initial-cluster-token=${this.#o.token}`,
      `--heartbeat-interval=${this.#o.heartbeatMs}`,
      `--election-timeout=${this.#o.electionTimeoutMs}`,
      ...this.#o.extraArgs,
      ...this.#o.memberArgs(this.members.indexOf(m)),
      ...extra,
    ];
  }

  /**
   * A slot for a member to add at run time (`etcdctl member add`): free ports and a data dir;
   * returns its index. Start it with `startExisting`.
   */
  async addMember(name = `m${this.members.length}`): Promise<number> {
    const clientPort = await freePort();
    const peerPort = await freePort();
    this.members.push({
      name,
      clientPort,
      peerPort,
      advertisedPeerPort: peerPort,
      dataDir: join(this.dir, name),
      endpoint: `127.0.0.1:${clientPort}`,
      proc: undefined,
      logs: [],
      droppedLogs: 0,
      stderr: '',
    });
    return this.members.length - 1;
  }

  /** `--initial-cluster` naming members `indexes` (as `etcdctl member add` prints it). */
  initialClusterOf(indexes: readonly number[]): string {
    return indexes
      .map(
        (j) =>
          `${this.members[j]!.name}=${this.#o.peerScheme}://127.0.0.1:${this.members[j]!.advertisedPeerPort}`,
      )
      .join(',');
  }

  /**
   * Starts member `i` with `--initial-cluster-state existing`, joining the running members
   * `indexes` (which include `i`), and waits until it serves.
   */
  async startExisting(i: number, indexes: readonly number[], timeoutMs = 60_000): Promise<void> {
    const m = this.members[i]!;
    const before = m.droppedLogs + m.logs.length;
    this.start(i, ['--initial-cluster-state=existing'], this.initialClusterOf(indexes));
    await this.waitLog(i, (l) => l.msg === 'serving', timeoutMs, before);
  }

  /** Starts member `i` (again, on its data dir). */
  start(i: number, extra: string[] = [], initialCluster?: string): ChildProcess {
    const m = this.members[i]!;
    if (m.proc && m.proc.exitCode === null && m.proc.signalCode === null)
      throw new Error(`member ${m.name} is already running (pid ${m.proc.pid})`);
    const child = spawn(process.execPath, this.args(m, extra, initialCluster), {
      cwd: root,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    children.add(child);
    child.once('exit', () => children.delete(child));
    m.proc = child;
    let partial = '';
    child.stderr!.on('data', (d: Buffer) => {
      partial += d.toString('utf8');
      const lines = partial.split('\n');
      partial = lines.pop()!;
      for (const line of lines) {
        if (line.trim() === '') continue;
        try {
          m.logs.push(JSON.parse(line) as LogLine);
          if (m.logs.length > logLinesMax) {
            m.droppedLogs += m.logs.length - logLinesMax;
            m.logs.splice(0, m.logs.length - logLinesMax);
          }
        } catch {
          if (m.stderr.length < 16_384) m.stderr += `${line}\n`;
        }
      }
    });
    return child;
  }

  /** SIGTERM; resolves with the exit code (SIGKILL after `timeoutMs`, then the code is null). */
  stop(i: number, timeoutMs = 30_000): Promise<number | null> {
    const c = this.members[i]!.proc;
    if (!c || c.exitCode !== null || c.signalCode !== null) return Promise.resolve(c?.exitCode ?? null);
    return new Promise((resolve) => {
      const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
      c.once('exit', (code) => {
        clearTimeout(t);
        resolve(code);
      });
      c.kill('SIGTERM');
    });
  }

  /** SIGKILL: the member dies at once, as in a crash. */
  kill(i: number): Promise<void> {
    const c = this.members[i]!.proc;
    if (!c || c.exitCode !== null || c.signalCode !== null) return Promise.resolve();
    return new Promise((resolve) => {
      c.once('exit', () => resolve());
      c.kill('SIGKILL');
    });
  }

  /** Starts member `i` again on its data dir and waits until it logs that it is serving. */
  async restart(i: number, timeoutMs = 30_000): Promise<void> {
    const m = this.members[i]!;
    const before = m.droppedLogs + m.logs.length;
    this.start(i);
    await this.waitLog(i, (l) => l.msg === 'serving', timeoutMs, before);
  }

  /** Waits for a log line of member `i` (from line `from` on). */
  async waitLog(i: number, match: (l: LogLine) => boolean, timeoutMs = 30_000, from = 0): Promise<LogLine> {
    const m = this.members[i]!;
    const until = performance.now() + timeoutMs;
    for (;;) {
      const hit = m.logs.slice(Math.max(0, from - m.droppedLogs)).find(match);
      if (hit) return hit;
      if (m.proc && (m.proc.exitCode !== null || m.proc.signalCode !== null))
        throw new Error(
          `member ${m.name} exited (${m.proc.exitCode ?? m.proc.signalCode}): ${this.report(i)}`,
        );
      if (performance.now() > until)
        throw new Error(`member ${m.name}: no matching log line in ${timeoutMs} ms: ${this.report(i)}`);
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** The index of the member that most recently logged itself leader, among running members. */
  leaderIndex(): number | undefined {
    let best: { i: number; term: number } | undefined;
    this.members.forEach((m, i) => {
      if (!m.proc || m.proc.exitCode !== null || m.proc.signalCode !== null) return;
      for (const l of m.logs)
        if (l.msg === 'leader elected' && l.self === true && (!best || (l.term as number) > best.term))
          best = { i, term: l.term as number };
    });
    if (!best) return undefined;
    // Still leader by the others' view: no later line of a higher term elsewhere.
    const top = Math.max(
      ...this.members.flatMap((m) =>
        m.logs.filter((l) => l.msg === 'leader elected').map((l) => l.term as number),
      ),
    );
    return best.term === top ? best.i : undefined;
  }

  /** Waits (bounded) until a running member logs itself leader of the newest term. */
  async waitLeader(timeoutMs = 30_000): Promise<number> {
    const until = performance.now() + timeoutMs;
    for (;;) {
      const i = this.leaderIndex();
      if (i !== undefined) return i;
      if (performance.now() > until)
        throw new Error(
          `no leader in ${timeoutMs} ms: ${this.members.map((_, j) => this.report(j)).join(' | ')}`,
        );
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** A short account of a member for failure messages. */
  report(i: number): string {
    const m = this.members[i]!;
    const tail = m.logs
      .slice(-6)
      .map((l) => l.msg)
      .join('; ');
    return `${m.name} pid ${m.proc?.pid ?? '-'} logs: ${tail} ${m.stderr.slice(-800)}`;
  }

  /** Kills every member still running and removes the data dirs. */
  async close(): Promise<void> {
    await Promise.all(this.members.map((_, i) => this.stop(i, 10_000)));
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** Starts a cluster of `conclave serve` processes (default 3) and waits for a leader. */
/** Fresh ports and a fresh start when a member could not bind its ports (another process took one). */
const startAttemptsMax = 3;

export async function startServed(opts: StartServedOptions = {}): Promise<ServedCluster> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startServedOnce(opts);
    } catch (err) {
      const busy = /cannot listen|EADDRINUSE|No address added/.test(String(err));
      if (!busy || attempt >= startAttemptsMax) throw err;
    }
  }
}

async function startServedOnce(opts: StartServedOptions): Promise<ServedCluster> {
  const n = opts.members ?? 3;
  const dir = mkdtempSync(join(tmpdir(), 'conclave-served-'));
  const members: ServedMember[] = [];
  for (let i = 0; i < n; i++) {
    const clientPort = await freePort();
    const peerPort = await freePort();
    members.push({
      name: `m${i}`,
      clientPort,
      peerPort,
      advertisedPeerPort: opts.advertisePeerPorts ? await freePort() : peerPort,
      dataDir: join(dir, `m${i}`),
      endpoint: `127.0.0.1:${clientPort}`,
      proc: undefined,
      logs: [],
      droppedLogs: 0,
      stderr: '',
    });
  }
  const c = new ServedCluster(
    dir,
    members,
    {
      heartbeatMs: opts.heartbeatMs ?? 50,
      electionTimeoutMs: opts.electionTimeoutMs ?? 500,
      token: opts.token ?? `served-${Math.random().toString(36).slice(2, 8)}`,
      extraArgs: opts.extraArgs ?? [],
      waitLeader: opts.waitLeader ?? true,
      clientScheme: opts.clientScheme ?? 'http',
      peerScheme: opts.peerScheme ?? 'http',
      memberArgs: opts.memberArgs ?? (() => []),
    },
    opts.entry,
  );
  try {
    await opts.beforeStart?.(c);
    for (let i = 0; i < n; i++) c.start(i);
    await Promise.all(members.map((_, i) => c.waitLog(i, (l) => l.msg === 'serving', 60_000)));
    if (opts.waitLeader ?? true) await c.waitLeader(60_000);
  } catch (err) {
    await c.close();
    throw err;
  }
  return c;
}
