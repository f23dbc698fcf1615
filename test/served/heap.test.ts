/**
 * The heap limit and the default quota: `conclave serve --max-old-space-size=MiB` runs the member
 * with that V8 heap limit (bin/conclave.js starts node with it), the default
 * `--quota-backend-bytes` is an eighth of the limit (so NOSPACE comes before the heap runs out),
 * and a limit the running node was not started with is refused rather than silently ignored.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterAll, describe, expect, it } from 'vitest';
import { parseServeArgs, UsageError } from '../../backends/raft/cli.js';
import { defaultQuotaBytes, heapLimitBytes, nodeMaxOldSpaceMb } from '../../backends/raft/heap.js';
import { freePort } from '../harness/etcd.js';

const MiB = 1024 * 1024;
const root = mkdtempSync(join(tmpdir(), 'conclave-heap-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

describe('heap limit and quota', () => {
  it('the default quota is an eighth of the heap limit (at most 2 GiB); an explicit one is kept', () => {
    expect(defaultQuotaBytes(400 * MiB)).toBe(50 * MiB);
    expect(defaultQuotaBytes(32 * 1024 * MiB)).toBe(2 * 1024 * MiB);
    const d = parseServeArgs([], {});
    expect(d.heapLimitBytes).toBe(heapLimitBytes());
    expect(d.quotaBackendBytes).toBe(defaultQuotaBytes(heapLimitBytes()));
    expect(parseServeArgs(['--quota-backend-bytes', '12345'], {}).quotaBackendBytes).toBe(12345);
  });

  it('a --max-old-space-size this node was not started with is a usage error naming both', () => {
    const running = nodeMaxOldSpaceMb();
    const asked = (running ?? 0) + 17;
    expect(() => parseServeArgs([`--max-old-space-size=${asked}`], {})).toThrow(UsageError);
    expect(() => parseServeArgs([], { CONCLAVE_MAX_OLD_SPACE_SIZE: String(asked) })).toThrow(
      new RegExp(`${asked} MiB is not this process's heap limit`),
    );
    expect(nodeMaxOldSpaceMb(['--max-old-space-size=300'], '--max-old-space-size=100')).toBe(300);
    expect(nodeMaxOldSpaceMb([], '--foo --max-old-space-size=100')).toBe(100);
  });

  const dist = join(process.cwd(), 'dist/backends/raft/cli.js');
  it('bin/conclave.js serve --max-old-space-size runs the member with that heap and stops it on SIGTERM', async () => {
    expect(existsSync(dist), `bin/conclave.js runs the built CLI: run npm run build (${dist})`).toBe(true);
    const [client, peer] = [await freePort(), await freePort()];
    const c = `http://127.0.0.1:${client}`;
    const p = `http://127.0.0.1:${peer}`;
    const child = spawn(
      process.execPath,
      [
        'bin/conclave.js',
        'serve',
        '--name=h',
        `--data-dir=${join(root, 'h')}`,
        `--listen-client-urls=${c}`,
        `--advertise-client-urls=${c}`,
        `--listen-peer-urls=${p}`,
        `--initial-advertise-peer-urls=${p}`,
        `--initial-cluster=h=${p}`,
        '--max-old-space-size=256',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    const lines: string[] = [];
    // The member's own PID (the wrapper's child): stopped by PID too if the test fails midway.
    let memberPid: number | undefined;
    try {
      const serving = await new Promise<Record<string, number>>((resolve, reject) => {
        createInterface({ input: child.stderr! }).on('line', (line) => {
          lines.push(line);
          try {
            const l = JSON.parse(line) as { msg?: string };
            if (l.msg === 'serving') resolve(l as unknown as Record<string, number>);
          } catch {
            // not a log line
          }
        });
        child.on('exit', (code) =>
          reject(new Error(`conclave exited ${code} before serving:\n${lines.slice(-10).join('\n')}`)),
        );
      });
      memberPid = serving.pid;
      // The member runs in the child node that has the limit (V8 adds its young generation).
      expect(serving.pid).not.toBe(child.pid);
      expect(serving.heapLimitBytes).toBeGreaterThanOrEqual(256 * MiB);
      expect(serving.heapLimitBytes).toBeLessThan(384 * MiB);
      expect(serving.quotaBackendBytes).toBe(Math.floor(serving.heapLimitBytes! * 0.125));
      // The CLI installs its signal handlers just after it logs "serving": on a loaded machine a
      // SIGTERM sent the instant the line arrives can beat them (node's default action then).
      await new Promise((r) => setTimeout(r, 500));
      const code = await new Promise<number | null>((resolve) => {
        child.on('exit', (c) => resolve(c));
        child.kill('SIGTERM');
      });
      expect(code).toBe(0);
      // The member itself is gone too.
      expect(() => process.kill(serving.pid!, 0)).toThrow();
    } finally {
      clearTimeout(guard);
      if (child.exitCode === null) child.kill('SIGKILL');
      if (memberPid !== undefined)
        try {
          process.kill(memberPid, 'SIGKILL');
        } catch {
          // already gone
        }
    }
  }, 90_000);
});
