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
 * - `power-loss`: not a defect but the crash model the next one needs — every start of the member
 *   follows a power loss, so what it wrote without fsync is gone. A correct member writes one thing
 *   unsynced, the COMMIT file (disk-storage.ts), deleted here before the member starts; everything
 *   it acknowledged is in its WAL, written with O_DSYNC. The control for `ack-before-fsync`.
 * - `ack-before-fsync` (implies `power-loss`): the WAL acknowledges a save at once and the bytes
 *   reach the disk `writebackMs` later (a volatile write cache that nobody flushes before
 *   answering). Held in the process's memory until then, so a SIGKILL loses exactly what a power
 *   loss would: the last `writebackMs` of appends, hard states (term and vote) included, which the
 *   member has already acknowledged to the leader (and, as leader, counted for commit). Raft's
 *   safety argument (§5.4, and §5.2 for the vote) needs them on stable storage before answering:
 *   with a majority crashed at once, a committed entry survives on no quorum, and a member that
 *   missed it can win the next election — an acknowledged write is lost.
 *
 * The WAL is reached by replacing `Wal.prototype.save` and `close` in this process only (the same
 * module instance the CLI then imports); nothing in the production code knows about it.
 */
import { existsSync, readdirSync, rmSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

export const testFaults = ['read-local', 'leader-read-local', 'power-loss', 'ack-before-fsync'] as const;
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

/** How long an acknowledged WAL save stays in the volatile cache under `ack-before-fsync`. */
export const writebackMs = 1000;

interface WalLike {
  save(records: readonly unknown[]): Promise<void>;
  close(): Promise<void>;
}

/**
 * `ack-before-fsync`: `save` resolves at once; the records are written (by the real save, in order,
 * one at a time as the WAL requires) once they are `writebackMs` old. `close` writes what is held
 * first (a clean stop loses nothing; only a crash does).
 */
function delayWalWrites(proto: WalLike): void {
  const save = proto.save;
  const close = proto.close;
  type Cache = { held: { at: number; records: unknown[] }[]; flushing: Promise<void> | undefined };
  const caches = new WeakMap<WalLike, Cache>();
  const cacheOf = (wal: WalLike): Cache => {
    let c = caches.get(wal);
    if (!c) caches.set(wal, (c = { held: [], flushing: undefined }));
    return c;
  };
  const flush = (wal: WalLike, c: Cache, all: boolean): Promise<void> => {
    c.flushing ??= (async () => {
      while (c.held.length > 0) {
        const wait = c.held[0]!.at + writebackMs - performance.now();
        if (!all && wait > 0) await new Promise((r) => setTimeout(r, wait));
        const now = performance.now();
        const due: unknown[] = [];
        while (c.held.length > 0 && (all || c.held[0]!.at + writebackMs <= now))
          due.push(...c.held.shift()!.records);
        if (due.length > 0) await save.call(wal, due);
      }
    })()
      .catch((err: unknown) => {
        process.stderr.write(`fault-entry: delayed WAL write failed: ${String(err)}\n`);
        process.exit(1);
      })
      .finally(() => {
        c.flushing = undefined;
      });
    return c.flushing;
  };
  proto.save = function (this: WalLike, records) {
    if (records.length === 0) return Promise.resolve();
    const c = cacheOf(this);
    c.held.push({ at: performance.now(), records: [...records] });
    void flush(this, c, false);
    return Promise.resolve();
  };
  proto.close = async function (this: WalLike) {
    const c = cacheOf(this);
    while (c.flushing) await c.flushing;
    if (c.held.length > 0) await flush(this, c, true);
    return close.call(this);
  };
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
  if (faults.includes('power-loss') || faults.includes('ack-before-fsync')) {
    const dataDir = rest.find((a) => a.startsWith('--data-dir='))?.slice('--data-dir='.length);
    // The crash before this start was a power loss: the COMMIT file's unsynced write is gone.
    if (dataDir) rmSync(join(dataDir, 'COMMIT'), { force: true });
  }
  if (faults.includes('ack-before-fsync')) {
    const walMod = (await import(`${base.url}/backends/raft/storage/wal${base.ext}`)) as {
      Wal: { prototype: WalLike };
    };
    delayWalWrites(walMod.Wal.prototype);
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
