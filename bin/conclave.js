#!/usr/bin/env node
// The `conclave` command. It runs the built CLI (dist/) in this very process, so the PID of
// `node bin/conclave.js serve …` is the member's PID (signals reach the member itself).
//
// One exception: the heap limit. A member keeps its store in the V8 heap, whose limit node reads
// only when it starts (`--max-old-space-size`). Given to `conclave serve` as
// `--max-old-space-size=MiB` (or CONCLAVE_MAX_OLD_SPACE_SIZE) while this node runs with another
// limit, this script starts the member in a child node with that limit, passes SIGINT, SIGTERM
// and SIGHUP on to it and exits with its exit code; the member's PID is then the child's.
// `node --max-old-space-size=MiB bin/conclave.js serve …` keeps one process. The CLI checks that
// the limit it runs with is the one asked for and derives the default --quota-backend-bytes from it.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { constants } from 'node:os';
import { fileURLToPath } from 'node:url';

const cli = new URL('../dist/backends/raft/cli.js', import.meta.url);
if (!existsSync(fileURLToPath(cli))) {
  const root = fileURLToPath(new URL('..', import.meta.url));
  process.stderr.write(
    `conclave: the built CLI is missing (${fileURLToPath(cli)}). Build it first: run \`npm run build\` in ${root} ` +
      '(npm ci and npm install run it through the prepare script). From a checkout, ' +
      '`node --import tsx backends/raft/cli.ts serve …` runs the sources without a build.\n',
  );
  process.exit(1);
}

const args = process.argv.slice(2);

/** The heap limit (MiB) asked of `conclave serve`, as a string, or undefined. */
function askedHeapMb() {
  if (args[0] !== 'serve') return undefined;
  let v = process.env.CONCLAVE_MAX_OLD_SPACE_SIZE;
  for (let i = 1; i < args.length; i++) {
    const m = /^--?max-old-space-size(?:=(.*))?$/s.exec(args[i]);
    if (m) v = m[1] ?? args[i + 1];
  }
  return v !== undefined && /^\d+$/.test(v) ? v : undefined;
}

/** The --max-old-space-size this node was started with (its arguments, then NODE_OPTIONS), or undefined. */
function runningHeapMb() {
  let v;
  const scan = (list) => {
    for (let i = 0; i < list.length; i++) {
      const m = /^--max[-_]old[-_]space[-_]size(?:=(\d+))?$/.exec(list[i]);
      if (m) v = m[1] ?? list[i + 1];
    }
  };
  scan((process.env.NODE_OPTIONS ?? '').split(/\s+/).filter(Boolean));
  scan(process.execArgv);
  return v;
}

const heapMb = askedHeapMb();
if (heapMb !== undefined && runningHeapMb() !== heapMb) {
  const child = spawn(
    process.execPath,
    [`--max-old-space-size=${heapMb}`, fileURLToPath(import.meta.url), ...args],
    {
      stdio: 'inherit',
    },
  );
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => child.kill(sig));
  child.on('exit', (code, signal) => {
    // A child ended by a signal: the shell convention (128 + its number).
    const n = signal ? (constants.signals[signal] ?? 0) : 0;
    process.exit(code ?? 128 + n);
  });
} else {
  const { main } = await import(cli.href);
  process.exit(await main(process.argv.slice(2)));
}
