/**
 * `conclave serve` as real processes: one OS process per member, on loopback, stopped by PID.
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../harness/etcd.js';
import { type ServedCluster, startServed } from '../harness/served.js';

let c: ServedCluster;

beforeAll(async () => {
  c = await startServed({ members: 3 });
}, 90_000);

afterAll(async () => {
  await c?.close();
});

describe('conclave serve processes', () => {
  it('served — three processes elect one leader that every member agrees on', async () => {
    const i = await c.waitLeader();
    const leaderId = c.members[i]!.logs.find((l) => l.msg === 'leader elected' && l.self === true)!.leader;
    for (let j = 0; j < 3; j++)
      await c.waitLog(j, (l) => l.msg === 'leader elected' && l.leader === leaderId);
    // Each process is the member itself: its PID is the one that logs.
    for (const m of c.members) expect(m.logs.find((l) => l.msg === 'serving')!.pid).toBe(m.proc!.pid);
  });

  it('served — a member of another cluster is refused at the handshake, with a log line on both sides', async () => {
    const target = c.members[0]!;
    const peerPort = await freePort();
    const from = target.logs.length + target.droppedLogs;
    // Same peer URL for m0, another token: another cluster ID.
    const stranger = spawn(
      process.execPath,
      [
        '--import',
        'tsx',
        'backends/raft/cli.ts',
        'serve',
        '--name=x',
        `--data-dir=${join(c.dir, 'stranger')}`,
        `--listen-client-urls=http://127.0.0.1:${await freePort()}`,
        `--listen-peer-urls=http://127.0.0.1:${peerPort}`,
        `--initial-advertise-peer-urls=http://127.0.0.1:${peerPort}`,
        `--initial-cluster=x=http://127.0.0.1:${peerPort},m0=http://127.0.0.1:${target.peerPort}`,
        '--initial-cluster-token=another-cluster',
        '--heartbeat-interval=50',
        '--election-timeout=500',
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let out = '';
    stranger.stderr!.on('data', (d: Buffer) => {
      out += d.toString();
    });
    try {
      const line = await c.waitLog(
        0,
        (l) => l.msg === 'refusing a peer at the handshake' && /cluster ID mismatch/.test(String(l.reason)),
        60_000,
        from,
      );
      expect(String(line.reason)).toMatch(/the dialer is in cluster [0-9a-f]+, this member in [0-9a-f]+/);
      const until = performance.now() + 30_000;
      while (!/peer refused the connection/.test(out) && performance.now() < until)
        await new Promise((r) => setTimeout(r, 50));
      expect(out).toMatch(/"msg":"peer refused the connection"/);
      expect(out).toMatch(/cluster ID mismatch/);
    } finally {
      stranger.kill('SIGKILL');
    }
  }, 90_000);

  it('served — SIGTERM to the leader transfers leadership first, then the process exits 0', async () => {
    const i = await c.waitLeader();
    const m = c.members[i]!;
    const term = Math.max(...m.logs.filter((l) => l.msg === 'leader elected').map((l) => l.term as number));
    const code = await c.stop(i);
    expect(code).toBe(0);
    expect(m.logs.some((l) => l.msg === 'transferring leadership before stopping')).toBe(true);
    expect(m.logs.some((l) => l.msg === 'leadership was not transferred before stopping')).toBe(false);
    expect(m.logs[m.logs.length - 1]!.msg).toBe('stopped');
    const next = await c.waitLeader();
    expect(next).not.toBe(i);
    const newTerm = c.members[next]!.logs.filter((l) => l.msg === 'leader elected').pop()!.term as number;
    expect(newTerm).toBeGreaterThan(term);
    await c.restart(i);
  }, 90_000);
});
