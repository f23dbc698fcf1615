/**
 * Real crashes: a child process running a durable 3-member embedded cluster under write
 * load is killed with SIGKILL at seeded-random moments, 20 times. After every restart, every write
 * the child had acknowledged is present and the store's revision never went backwards.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { Prng } from '../sim/prng.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'conclave-crash-'));
const children = new Set<ChildProcess>();
afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(root, { recursive: true, force: true });
});

interface RunResult {
  state: { revision: number; keys: string[] };
  acks: Array<{ key: string; revision: number }>;
}

/** Longest a child may take to recover and report its state. */
const startupMsMax = 60_000;

/** Starts the child, waits for its state line, lets it write for `writeMs`, kills it (bounded). */
function runChild(dir: string, run: number, writeMs: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', join(here, 'crash-child.ts'), dir, String(run)],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    children.add(child);
    let state: RunResult['state'] | undefined;
    const acks: RunResult['acks'] = [];
    let stderr = '';
    child.stderr!.on('data', (d) => {
      stderr += String(d);
    });
    // Bounds a child that never reports (startup includes tsx's transform and recovery; a loaded
    // machine can take tens of seconds).
    let guardFired = false;
    const guard = setTimeout(() => {
      guardFired = true;
      child.kill('SIGKILL');
    }, startupMsMax);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (!state) {
        state = JSON.parse(line) as RunResult['state'];
        setTimeout(() => child.kill('SIGKILL'), writeMs);
        return;
      }
      const [tag, key, rev] = line.split(' ');
      if (tag === 'ack') acks.push({ key: key!, revision: Number(rev) });
    });
    child.on('exit', () => {
      clearTimeout(guard);
      children.delete(child);
      if (!state)
        reject(
          new Error(
            `crash child ${run} died before reporting its state${guardFired ? ` (killed: no state within ${startupMsMax} ms)` : ''}:\n${stderr}`,
          ),
        );
      else resolve({ state, acks });
    });
  });
}

it('crash — SIGKILL at random moments under write load loses no acknowledged write, and the revision never goes back', async () => {
  const dir = join(root, 'cluster');
  const rand = new Prng(0xc0ffee);
  const acked = new Map<string, number>();
  let maxAckedRev = 0;
  let lastRevision = 0;
  let totalAcks = 0;
  const kills = 20;
  for (let run = 0; run <= kills; run++) {
    const writeMs = 100 + rand.int(500);
    const { state, acks } = await runChild(dir, run, run === kills ? 0 : writeMs);
    const present = new Set(state.keys);
    const missing = [...acked.keys()].filter((k) => !present.has(k));
    expect(missing, `run ${run}: acknowledged writes lost after the crash`).toEqual([]);
    expect(state.revision, `run ${run}: revision went back`).toBeGreaterThanOrEqual(
      Math.max(lastRevision, maxAckedRev),
    );
    lastRevision = state.revision;
    for (const a of acks) {
      acked.set(a.key, a.revision);
      maxAckedRev = Math.max(maxAckedRev, a.revision);
    }
    totalAcks += acks.length;
  }
  // The load was real: writes were acknowledged between the kills.
  expect(totalAcks).toBeGreaterThan(kills * 10);
  console.log(`crash test: ${kills} kills, ${totalAcks} acknowledged writes, final revision ${lastRevision}`);
}, 600_000);
