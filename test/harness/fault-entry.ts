/**
 * A test-only entry for `conclave serve` with deliberate defects switched on, to prove that the
 * nemesis and the linearizability checker catch real bugs. It lives only under test/ and is never
 * built into dist/ (test/nemesis/dist-clean.test.ts checks that dist/ names none of the switches).
 *
 *   node --import tsx test/harness/fault-entry.ts serve --test-fault=<name> [...] <serve flags>
 *
 * The process that starts is the member itself (it calls the CLI's `main` in-process), so its PID
 * is the member's and signals reach it. The defects are installed by replacing methods on the
 * production classes before the member starts (no production code path knows about them):
 *
 * - `read-local`: every member answers a linearizable read from its own state, without ReadIndex
 *   (Raft thesis §6.4) — a follower serves stale data, a deposed leader keeps serving old data.
 * - `leader-read-local`: a member that believes it leads answers linearizable reads locally without
 *   confirming its leadership with a quorum — a leader cut off by a partition (or paused and woken
 *   up) serves reads while a new leader takes writes.
 * - `ack-before-fsync`: the power-loss model of a member that acknowledged appends before they were
 *   durable: nothing it wrote to its WAL survives a crash, so a restarted member comes back with an
 *   empty log and no vote (its identity file, written with its own fsync, is kept). With it a
 *   member can help commit an entry, crash, then vote for a candidate that never had it (Raft §5.4's
 *   safety argument needs the log and vote to be on stable storage before answering).
 */
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const testFaults = ['read-local', 'leader-read-local', 'ack-before-fsync'] as const;
export type TestFault = (typeof testFaults)[number];
const faultFlag = '--test-fault=';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));

function newestMs(dir: string): number {
  let newest = 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) newest = Math.max(newest, newestMs(p));
    else if (e.name.endsWith('.ts')) newest = Math.max(newest, statSync(p).mtimeMs);
  }
  return newest;
}

/** The built modules when dist/ is newer than the sources (a member starts faster), else the sources. */
function moduleBase(): { url: string; ext: string } {
  const dist = join(root, 'dist/backends/raft/cli.js');
  if (
    process.env.CONCLAVE_SERVED_SOURCES !== '1' &&
    existsSync(dist) &&
    statSync(dist).mtimeMs >= Math.max(newestMs(join(root, 'src')), newestMs(join(root, 'backends')))
  )
    return { url: pathToFileURL(join(root, 'dist')).href, ext: '.js' };
  return { url: pathToFileURL(root).href, ext: '.ts' };
}

interface ReadIndexed {
  readonly raft: { readonly id: number; readonly lead: number };
  readIndex(): Promise<void>;
}

async function run(): Promise<number> {
  const args = process.argv.slice(2);
  const faults = args.filter((a) => a.startsWith(faultFlag)).map((a) => a.slice(faultFlag.length));
  for (const f of faults)
    if (!(testFaults as readonly string[]).includes(f)) {
      process.stderr.write(`fault-entry: unknown --test-fault=${f} (known: ${testFaults.join(', ')})\n`);
      return 2;
    }
  const rest = args.filter((a) => !a.startsWith(faultFlag));
  const base = moduleBase();
  const nodeMod = (await import(`${base.url}/backends/raft/node/node${base.ext}`)) as {
    RaftNode: { prototype: ReadIndexed };
  };
  const proto = nodeMod.RaftNode.prototype;
  const readIndex = proto.readIndex;
  if (faults.includes('read-local')) proto.readIndex = async () => {};
  if (faults.includes('leader-read-local'))
    proto.readIndex = function (this: ReadIndexed) {
      return this.raft.lead === this.raft.id ? Promise.resolve() : readIndex.call(this);
    };
  if (faults.includes('ack-before-fsync')) {
    const dataDir = rest.find((a) => a.startsWith('--data-dir='))?.slice('--data-dir='.length);
    // The crash happened before this start: what was never synced is gone.
    if (dataDir) for (const d of ['wal', 'snap']) rmSync(join(dataDir, d), { recursive: true, force: true });
  }
  const cli = (await import(`${base.url}/backends/raft/cli${base.ext}`)) as {
    main(args: readonly string[]): Promise<number>;
  };
  return cli.main(rest);
}

// Runs only as the process's entry (importing this module for `testFaults` starts nothing).
if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url))
  run().then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(
        `fault-entry: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
      );
      process.exit(1);
    },
  );
