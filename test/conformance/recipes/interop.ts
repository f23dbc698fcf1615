import { type ChildProcess, spawn } from 'node:child_process';
import { expect, it } from 'vitest';
import { Election } from '../../../recipes/election.js';
import { Mutex } from '../../../recipes/mutex.js';
import { toText } from '../../../src/keys.js';
import { Session } from '../../../src/session.js';
import type { RegisterTests } from '../context.js';
import { sleep, waitFor } from '../util.js';

/** `etcdctl lock NAME` prints the lock key once it holds the lock, and holds it until killed. */
export function etcdctlLock(endpoints: string[], name: string): { child: ChildProcess; out: () => string } {
  let out = '';
  const child = spawn('etcdctl', ['--endpoints', endpoints.join(','), 'lock', name], {
    env: { ...process.env, ETCDCTL_API: '3' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  return { child, out: () => out };
}

export async function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((r) => child.once('exit', r));
  child.kill('SIGINT');
  const t = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(t);
}

export const registerInteropTests: RegisterTests = (ctx) => {
  it('interop — a Conclave Mutex and `etcdctl lock` on the same name exclude each other', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.etcdctl || !backend.endpoints) {
      t.skip();
      return;
    }
    const name = `${prefix('interop-lock')}lock`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const mine = await new Mutex(s, name).lock();
    const ctl = etcdctlLock(backend.endpoints(), name);
    try {
      await waitFor(
        async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
        10_000,
        'etcdctl to queue',
      );
      await sleep(300);
      expect(ctl.out()).not.toContain(name); // still waiting behind us
      await mine.unlock();
      await waitFor(() => ctl.out().includes(`${name}/`), 10_000, 'etcdctl to acquire');
      // Now etcdctl holds it: our next lock must wait until etcdctl lets go.
      let acquired = false;
      const again = new Mutex(s, name).lock().then((h) => {
        acquired = true;
        return h;
      });
      await sleep(300);
      expect(acquired).toBe(false);
      await stop(ctl.child);
      const h = await again;
      expect(h.token).toBeGreaterThan(mine.token);
      await h.unlock();
    } finally {
      await stop(ctl.child);
    }
  }, 30_000);

  it('interop — a Conclave Election and `etcdctl elect` take turns on the same name', async (t) => {
    const { kv, prefix, backend } = ctx();
    if (!backend.supports.etcdctl || !backend.endpoints) {
      t.skip();
      return;
    }
    const name = `${prefix('interop-elect')}e`;
    await using s = await Session.create(kv, { ttlSeconds: backend.minTtlSeconds + 5 });
    const election = new Election(s, name);
    const mine = await election.campaign('conclave');
    let out = '';
    const child = spawn('etcdctl', ['--endpoints', backend.endpoints().join(','), 'elect', name, 'etcdctl'], {
      env: { ...process.env, ETCDCTL_API: '3' },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    try {
      await waitFor(
        async () => (await kv.range(`${name}/`, { prefix: true, countOnly: true })).count === 2,
        10_000,
        'etcdctl to campaign',
      );
      expect(toText((await election.leader())!.value)).toBe('conclave');
      await mine.resign();
      await waitFor(() => out.includes('etcdctl'), 10_000, 'etcdctl to be elected');
      const leader = await election.leader();
      expect(toText(leader!.value)).toBe('etcdctl');
      expect(leader!.token).toBeGreaterThan(mine.token);
    } finally {
      await stop(child);
    }
    await waitFor(async () => (await election.leader()) === undefined, 10_000, 'etcdctl to resign on exit');
  }, 30_000);
};
