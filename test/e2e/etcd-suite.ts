/**
 * etcd's own end-to-end suite (etcd 3.4.23's `tests/e2e`, from Debian's golang-etcd-server-dev)
 * against real etcd and against `conclave serve`:
 *
 *   npm run e2e:etcd -- --target etcd|served|both [--run REGEX] [--subset ci] [--no-build]
 *
 * - Builds the suite once (`go test -c`, GOPATH=/usr/share/gocode, no network) into the cache
 *   folder (CONCLAVE_E2E_CACHE, default /tmp/conclave-e2e-etcd: shared by checkouts, the build
 *   takes minutes) and lays out the folder the suite runs in: two levels below a folder holding
 *   `integration/fixtures` (the JWT tests name their keys `../../integration/fixtures/...`).
 * - `<bin-dir>/etcd` is /usr/bin/etcd (target etcd) or test/e2e/bin/etcd, which execs
 *   `node bin/conclave.js serve` (target served; dist/ is built first unless --no-build);
 *   `<bin-dir>/etcdctl` is the real etcdctl 3.4.
 * - Runs each top-level test of the selection in its own test process, one after another (the
 *   suite uses fixed ports 20000-20024, 10000-10002 and 23790: never two runs at once, which a lock
 *   file enforces), with a per-test time limit, so one hung test costs its limit, not the run. Every
 *   server and etcdctl the suite starts records its PID through the launchers; what a failed test
 *   leaves running is stopped by PID afterwards.
 * - Merges the results into .tmp/e2e-etcd/<target>.json (a rerun of some tests updates them),
 *   prints both targets side by side per test, and exits 1 when a test of this run failed that is
 *   not on the exclusion list (test/e2e/exclusions.txt, each entry with its reason).
 *
 * The default selection is the one docs/compatibility.md reports; `--subset ci` is the part CI
 * could run (KV, txn, watch, lease, lock, elect, compaction, endpoint status, member list; no TLS).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  unlinkSync,
  writeFileSync,
} from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const repo = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const gopath = '/usr/share/gocode';
const fixtures = `${gopath}/src/go.etcd.io/etcd/integration/fixtures`;
const cache = process.env.CONCLAVE_E2E_CACHE ?? '/tmp/conclave-e2e-etcd';
const work = join(repo, '.tmp/e2e-etcd');
const lockFile = '/tmp/conclave-e2e-etcd.lock';

/** The selection docs/compatibility.md reports (203 tests in etcd 3.4.23). */
export const fullSelection =
  'TestCtlV3|TestV3Curl|TestV3Metrics|TestEtcdPeer|TestEtcdMultiPeer|TestIssue6361';
/** KV, txn, watch, lease, lock, elect, compaction, endpoint status, member list; no TLS, no auth. */
export const ciSelection = `^(${[
  'TestCtlV3PutNoTLS',
  'TestCtlV3GetNoTLS',
  'TestCtlV3DelNoTLS',
  'TestCtlV3TxnInteractiveSuccessNoTLS',
  'TestCtlV3TxnInteractiveFail',
  'TestCtlV3WatchNoTLS',
  'TestCtlV3WatchInteractiveNoTLS',
  'TestCtlV3LeaseGrantTimeToLiveNoTLS',
  'TestCtlV3LeaseGrantLeasesNoTLS',
  'TestCtlV3LeaseTestTimeToLiveExpiredNoTLS',
  'TestCtlV3LeaseKeepAliveNoTLS',
  'TestCtlV3LeaseKeepAliveOnceNoTLS',
  'TestCtlV3LeaseRevokeNoTLS',
  'TestCtlV3Lock',
  'TestCtlV3Elect',
  'TestCtlV3Compact',
  'TestCtlV3CompactPhysical',
  'TestCtlV3EndpointStatus',
  'TestCtlV3EndpointHealth',
  'TestCtlV3MemberListNoTLS',
].join('|')})$`;

/** Longest one test may run (its own process) before it counts as failed: the machine may be loaded. */
const testTimeoutSeconds = 240;
/** Tests in one selection (etcd 3.4.23's e2e suite has about 250 in all). */
const selectionMax = 400;

type Status = 'pass' | 'fail' | 'skip' | 'timeout';
interface Result {
  status: Status;
  seconds: number;
  /** First lines of the failure, for the table's notes. */
  why?: string;
}
interface ResultsFile {
  target: string;
  updated: string;
  commit: string;
  tests: Record<string, Result>;
}

interface Args {
  targets: Array<'etcd' | 'served'>;
  run: string;
  build: boolean;
  list: boolean;
  /** Print the stored results of the selection as a markdown table (docs/compatibility.md); run nothing. */
  report: boolean;
}

function usage(msg: string): never {
  process.stderr.write(
    `e2e:etcd: ${msg}\nusage: npm run e2e:etcd -- --target etcd|served|both [--run REGEX | --subset ci] [--no-build] [--list]\n`,
  );
  process.exit(2);
}

function parseArgs(argv: readonly string[]): Args {
  let target: string | undefined;
  let run = fullSelection;
  let build = true;
  let list = false;
  let report = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--target') target = argv[++i];
    else if (a === '--run') run = argv[++i] ?? usage('--run needs a regular expression');
    else if (a === '--subset') {
      const s = argv[++i];
      if (s !== 'ci') usage(`--subset ${s}: the only subset is "ci"`);
      run = ciSelection;
    } else if (a === '--no-build') build = false;
    else if (a === '--list') list = true;
    else if (a === '--report') report = true;
    else usage(`unknown argument ${a}`);
  }
  if (report) target ??= 'both';
  if (target !== 'etcd' && target !== 'served' && target !== 'both')
    usage('--target must be etcd, served or both');
  return { targets: target === 'both' ? ['etcd', 'served'] : [target], run, build, list, report };
}

function sh(cmd: string, args: readonly string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}) {
  const r = spawnSync(cmd, args, { stdio: 'inherit', ...opts });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.status ?? r.signal})`);
}

/** The suite's test binary, built once into the cache. */
function suiteBinary(): string {
  const bin = join(cache, 'e2e.test');
  if (existsSync(bin)) return bin;
  if (spawnSync('go', ['version']).status !== 0 || !existsSync(`${gopath}/src/go.etcd.io/etcd/tests/e2e`))
    throw new Error(
      'building the suite needs Go and etcd 3.4\'s sources: run "apt-get install -y golang-go golang-etcd-server-dev"',
    );
  mkdirSync(cache, { recursive: true });
  process.stderr.write(`e2e:etcd: building etcd's e2e suite into ${bin} (once; a few minutes)\n`);
  sh('go', ['test', '-c', '-o', bin, 'go.etcd.io/etcd/tests/e2e'], {
    env: { ...process.env, GO111MODULE: 'off', GOPATH: gopath, GOFLAGS: '' },
  });
  return bin;
}

/** Folder the suite runs in: <root>/tests/e2e, with <root>/integration/fixtures. */
function runFolder(): string {
  const root = join(cache, 'root');
  mkdirSync(join(root, 'integration'), { recursive: true });
  mkdirSync(join(root, 'tests/e2e'), { recursive: true });
  const link = join(root, 'integration/fixtures');
  if (!existsSync(link)) symlinkSync(fixtures, link);
  return join(root, 'tests/e2e');
}

/** `<bin-dir>` for a target: etcd (or the conclave launcher) and etcdctl, each recording its PID. */
function binDir(target: 'etcd' | 'served'): string {
  const dir = join(work, `bin-${target}`);
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { recursive: true });
  const wrap = (name: string, exe: string) => {
    writeFileSync(
      join(dir, name),
      `#!/bin/sh\nif [ -n "$CONCLAVE_E2E_PIDS" ]; then echo ${name} >"$CONCLAVE_E2E_PIDS/$$"; fi\nexec ${exe} "$@"\n`,
      { mode: 0o755 },
    );
  };
  if (target === 'etcd') wrap('etcd', '/usr/bin/etcd');
  else symlinkSync(join(repo, 'test/e2e/bin/etcd'), join(dir, 'etcd'));
  wrap('etcdctl', '/usr/bin/etcdctl');
  return dir;
}

/**
 * Boolean etcd flags the suite passes to every member (testCtl adds
 * --experimental-initial-corrupt-check to each) that `conclave serve` does not accept: the
 * launcher drops them, for these runs only. A flag `conclave serve --help` lists is passed through.
 */
const droppableFlags = ['experimental-initial-corrupt-check'] as const;

function flagsToDrop(): string[] {
  const r = spawnSync('node', [join(repo, 'bin/conclave.js'), 'serve', '--help'], { encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`conclave serve --help failed: ${r.stderr}`);
  return droppableFlags.filter((f) => !r.stdout.includes(`--${f} `) && !r.stdout.includes(`--${f}\n`));
}

function listTests(bin: string, cwd: string, regex: string): string[] {
  const r = spawnSync(bin, ['-test.list', regex], { cwd, encoding: 'utf8' });
  if (r.status !== 0) throw new Error(`listing the suite's tests failed: ${r.stderr}`);
  const names = r.stdout.split('\n').filter((l) => /^Test\w+$/.test(l));
  if (names.length > selectionMax)
    throw new Error(`the selection has ${names.length} tests, more than selectionMax (${selectionMax})`);
  return names;
}

function exclusions(): Map<string, string> {
  const m = new Map<string, string>();
  const text = readFileSync(join(repo, 'test/e2e/exclusions.txt'), 'utf8');
  for (const line of text.split('\n')) {
    const t = line.trim();
    if (t === '' || t.startsWith('#')) continue;
    const [, name, why] = /^(\S+)\s+(.*)$/.exec(t) ?? [];
    if (!name || !why) throw new Error(`test/e2e/exclusions.txt: "${t}" needs a test name and a reason`);
    m.set(name, why);
  }
  return m;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Stops (by PID) every server and etcdctl a test started that is still running. */
function stopLeftovers(pids: string): number {
  let stopped = 0;
  for (const f of readdirSync(pids)) {
    const pid = Number(f);
    const what = readFileSync(join(pids, f), 'utf8').trim();
    unlinkSync(join(pids, f));
    if (!Number.isInteger(pid) || !alive(pid)) continue;
    // The PID may have been reused since: only a process still running our binary is stopped.
    let cmd = '';
    try {
      cmd = readFileSync(`/proc/${pid}/cmdline`, 'utf8');
    } catch {
      continue;
    }
    if (!cmd.includes(what === 'conclave' ? 'conclave' : what)) continue;
    try {
      process.kill(pid, 'SIGKILL');
      stopped++;
    } catch {
      // exited meanwhile
    }
  }
  return stopped;
}

function runOne(
  bin: string,
  cwd: string,
  dir: string,
  name: string,
  logPath: string,
  pids: string,
  dropFlags: readonly string[],
): Promise<Result> {
  const started = Date.now();
  return new Promise((done) => {
    const child: ChildProcess = spawn(
      bin,
      [
        '-bin-dir',
        dir,
        '-cert-dir',
        fixtures,
        '-test.run',
        `^${name}$`,
        '-test.v',
        '-test.timeout',
        `${testTimeoutSeconds}s`,
      ],
      {
        cwd,
        env: {
          ...process.env,
          CONCLAVE_E2E_PIDS: pids,
          CONCLAVE_E2E_DROP_FLAGS: dropFlags.join(' '),
          // The members' and etcdctl's output in the test's log (pkg/expect prints every line).
          EXPECT_DEBUG: '1',
        },
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    const chunks: Buffer[] = [];
    child.stdout!.on('data', (b: Buffer) => chunks.push(b));
    child.stderr!.on('data', (b: Buffer) => chunks.push(b));
    // The suite's own -test.timeout panics; this is the backstop if the process itself hangs.
    const guard = setTimeout(() => child.kill('SIGKILL'), (testTimeoutSeconds + 60) * 1000);
    child.on('close', () => {
      clearTimeout(guard);
      const out = Buffer.concat(chunks).toString('utf8');
      writeFileSync(logPath, out);
      const seconds = Math.round((Date.now() - started) / 100) / 10;
      // Not anchored: a test that prints binary output (etcdctl -w protobuf) leaves no newline before it.
      const m = new RegExp(`--- (PASS|FAIL|SKIP): ${name} \\(`).exec(out);
      let status: Status = m ? (m[1]!.toLowerCase() as Status) : 'fail';
      if (!m && /panic: test timed out/.test(out)) status = 'timeout';
      const result: Result = { status, seconds };
      if (status === 'fail' || status === 'timeout') result.why = firstFailure(out);
      done(result);
    });
  });
}

/** The first failure message of a test's output, one line. */
function firstFailure(out: string): string {
  const lines = out.split('\n');
  const i = lines.findIndex((l) => /_test\.go:\d+: /.test(l) || /^panic: /.test(l));
  const text = i < 0 ? (lines.find((l) => l.trim() !== '') ?? '') : lines[i]!;
  return text.trim().slice(0, 200);
}

function load(target: string): ResultsFile | undefined {
  const p = join(work, `${target}.json`);
  return existsSync(p) ? (JSON.parse(readFileSync(p, 'utf8')) as ResultsFile) : undefined;
}

function commit(): string {
  const r = spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: repo, encoding: 'utf8' });
  return r.stdout.trim() || 'unknown';
}

/** One run at a time on this machine (fixed ports); a lock whose holder has died is taken over. */
function takeLock(): () => void {
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fd = openSync(lockFile, 'wx');
      writeFileSync(fd, String(process.pid));
      closeSync(fd);
      return () => rmSync(lockFile, { force: true });
    } catch {
      const holder = Number(readFileSync(lockFile, 'utf8'));
      if (Number.isInteger(holder) && holder > 0 && alive(holder))
        throw new Error(
          `another run of etcd's e2e suite (PID ${holder}) is in progress: the suite uses fixed ports, so wait for it`,
        );
      rmSync(lockFile, { force: true });
    }
  }
  throw new Error(`cannot take ${lockFile}`);
}

const pad = (s: string, n: number) => (s.length >= n ? s : s + ' '.repeat(n - s.length));

function printTable(names: readonly string[], excluded: Map<string, string>): void {
  const etcd = load('etcd')?.tests ?? {};
  const served = load('served')?.tests ?? {};
  const cell = (r: Result | undefined) => (r ? `${r.status} ${r.seconds}s` : '-');
  const w = Math.max(...names.map((n) => n.length), 4);
  const lines = [`${pad('test', w)}  ${pad('etcd', 14)}  ${pad('conclave', 14)}  notes`];
  let etcdPass = 0;
  let servedPass = 0;
  let ex = 0;
  for (const n of names) {
    const e = etcd[n];
    const s = served[n];
    if (e?.status === 'pass') etcdPass++;
    if (s?.status === 'pass') servedPass++;
    const why = excluded.get(n);
    if (why) ex++;
    const note = why ? `excluded: ${why}` : s && s.status !== 'pass' && s.why ? s.why : '';
    lines.push(`${pad(n, w)}  ${pad(cell(e), 14)}  ${pad(cell(s), 14)}  ${note}`);
  }
  lines.push(
    '',
    `${names.length} tests; passed on etcd ${etcdPass}; passed on conclave ${servedPass}; excluded ${ex}`,
  );
  process.stdout.write(`${lines.join('\n')}\n`);
}

/** The stored results as docs/compatibility.md's table: one row per test, then the totals. */
function printMarkdown(names: readonly string[], excluded: Map<string, string>): void {
  const etcd = load('etcd');
  const served = load('served');
  const cell = (r: Result | undefined) =>
    r ? (r.status === 'pass' ? 'pass' : `**${r.status}**`) : 'not run';
  const rows = ['| Test | etcd 3.4.23 | conclave serve | Notes |', '| --- | --- | --- | --- |'];
  let etcdPass = 0;
  let servedPass = 0;
  let both = 0;
  for (const n of names) {
    const e = etcd?.tests[n];
    const s = served?.tests[n];
    if (e?.status === 'pass') etcdPass++;
    if (s?.status === 'pass') servedPass++;
    if (e?.status === 'pass' && s?.status === 'pass') both++;
    const why = excluded.get(n);
    const note = why
      ? `excluded: ${why}`
      : s && s.status !== 'pass'
        ? (s.why ?? '').replace(/\|/g, '\\|')
        : '';
    rows.push(`| ${n} | ${cell(e)} | ${cell(s)} | ${note} |`);
  }
  process.stdout.write(
    [
      `Tests run: ${names.length}. Passed on etcd: ${etcdPass}. Passed on conclave serve: ${servedPass} (${both} of them also on etcd). Excluded: ${excluded.size}.`,
      `Results: etcd ${etcd?.updated ?? '-'} at ${etcd?.commit ?? '-'}; conclave serve ${served?.updated ?? '-'} at ${served?.commit ?? '-'}.`,
      '',
      ...rows,
      '',
    ].join('\n'),
  );
}

async function main(): Promise<number> {
  const args = parseArgs(process.argv.slice(2));
  const excluded = exclusions();
  const bin = suiteBinary();
  const cwd = runFolder();
  const names = listTests(bin, cwd, args.run);
  if (names.length === 0) usage(`no test matches ${args.run}`);
  if (args.list) {
    printTable(names, excluded);
    return 0;
  }
  if (args.report) {
    printMarkdown(names, excluded);
    return 0;
  }
  const release = takeLock();
  let failed = 0;
  try {
    for (const target of args.targets) {
      if (target === 'served' && args.build) sh('npm', ['run', '-s', 'build'], { cwd: repo });
      const dir = binDir(target);
      const dropped = target === 'served' ? flagsToDrop() : [];
      if (dropped.length > 0)
        process.stderr.write(
          `e2e:etcd: conclave serve refuses ${dropped.map((f) => `--${f}`).join(', ')}, which the suite passes to every member: the launcher drops it for this run (docs/compatibility.md)\n`,
        );
      const logs = join(work, 'logs', target);
      mkdirSync(logs, { recursive: true });
      const pids = join(work, 'pids');
      rmSync(pids, { recursive: true, force: true });
      mkdirSync(pids, { recursive: true });
      const file: ResultsFile = load(target) ?? { target, updated: '', commit: '', tests: {} };
      for (const [i, name] of names.entries()) {
        const r = await runOne(bin, cwd, dir, name, join(logs, `${name}.log`), pids, dropped);
        const left = stopLeftovers(pids);
        file.tests[name] = r;
        file.updated = new Date().toISOString();
        file.commit = commit();
        writeFileSync(join(work, `${target}.json`), `${JSON.stringify(file, null, 1)}\n`);
        const bad = r.status === 'fail' || r.status === 'timeout';
        if (bad && !excluded.has(name)) failed++;
        process.stderr.write(
          `[${target} ${i + 1}/${names.length}] ${name}: ${r.status} (${r.seconds}s)${left ? `, stopped ${left} left running` : ''}${bad && r.why ? ` — ${r.why}` : ''}\n`,
        );
      }
    }
  } finally {
    release();
  }
  printTable(names, excluded);
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`e2e:etcd: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
