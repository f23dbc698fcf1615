/**
 * Closing down: an embedded store that is the only thing left does not keep a script alive, and a
 * durable one loses nothing acknowledged when the script just ends (a write resolves only after its
 * WAL record is synced). Each case runs a child process that never closes its store and must exit
 * by itself, well before the bound (a store that keeps the process alive would hit it).
 */
import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';

const child = resolve(import.meta.dirname, 'exit-child.ts');
/** A store keeping the child alive would run into this bound; a healthy child ends in ~1-3 s. */
const exitBoundMs = 30_000;

function run(
  ...args: string[]
): Promise<{ code: number | null; timedOut: boolean; stdout: string; stderr: string }> {
  return new Promise((done) => {
    const p = spawn(process.execPath, ['--import', 'tsx', child, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => {
      timedOut = true;
      p.kill('SIGKILL');
    }, exitBoundMs);
    p.on('close', (code) => {
      clearTimeout(timer);
      done({ code, timedOut, stdout, stderr });
    });
  });
}

const dirs: string[] = [];
afterAll(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

describe('closing down', () => {
  it('a script that never closes a 3-member memory store (a session, a mutex, a closed watch) exits on its own', async () => {
    const r = await run('memory');
    expect(r).toMatchObject({ timedOut: false, code: 0, stderr: '' });
    expect(r.stdout).toContain('done 1');
  }, 60_000);

  it('a script that never closes a durable store exits on its own, and every acknowledged write is there on reopen', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'conclave-exit-'));
    dirs.push(dir);
    const w = await run('durable', dir);
    expect(w).toMatchObject({ timedOut: false, code: 0, stderr: '' });
    expect(w.stdout).toContain('done');
    // The lock file left behind names a process that is gone: the next open takes it over.
    const r = await run('reopen', dir);
    expect(r).toMatchObject({ timedOut: false, code: 0, stderr: '' });
    expect(r.stdout).toContain('keys 20 last v19');
  }, 90_000);

  it('an open watch keeps the process alive while it waits: a lease still expires and its delete is delivered', async () => {
    const r = await run('expiry');
    expect(r).toMatchObject({ timedOut: false, code: 0, stderr: '' });
    expect(r.stdout).toContain('expired');
  }, 60_000);
});
