/**
 * etcd's Auth service on a 3-member `conclave serve` cluster, driven by etcdctl 3.4 and the
 * Conclave client: users, roles and a permission on a prefix made on different members (changes
 * go through Raft), `auth enable` (etcdctl adds the root role itself), then what a user may and
 * may not do, with etcd's errors; no credentials and a wrong password are refused; 1,000 failed Authenticate calls leave the member as it was; a Mutex held by
 * a user with permission only on its prefix works.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { Mutex } from '../../recipes/index.js';
import { decoder, encoder, methods, pb } from '../../src/protocol/codec.js';
import { Session } from '../../src/session.js';
import { type ServedCluster, startServed } from '../harness/served.js';

const etcdctl = spawnSync('etcdctl', ['version'], { env: { ...process.env, ETCDCTL_API: '3' } }).status === 0;
const available = etcdctl || process.env.REQUIRE_ETCD === '1';
const rootPw = 'root-pw-81';
const alice = { username: 'alice', password: 'alice-pw-27' };

describe.skipIf(!available)('served — etcd Auth service', () => {
  let c: ServedCluster;
  /** etcdctl against member `i`; returns stdout+stderr and the exit status. */
  const ctl = (i: number, ...a: string[]) => {
    // Generous timeouts: a loaded machine (CI runs files in parallel) slows scrypt and Raft rounds.
    const r = spawnSync(
      'etcdctl',
      [`--endpoints=${c.endpoints[i]!}`, '--command-timeout=30s', '--dial-timeout=10s', ...a],
      {
        env: { ...process.env, ETCDCTL_API: '3' },
        encoding: 'utf8',
        timeout: 90_000,
      },
    );
    return { out: `${r.stdout}${r.stderr}`, status: r.status };
  };
  const ok = (i: number, ...a: string[]) => {
    const r = ctl(i, ...a);
    if (r.status !== 0) throw new Error(`etcdctl ${a.join(' ')}: ${r.out}`);
    return r.out;
  };

  beforeAll(async () => {
    c = await startServed({ members: 3 });
    ok(0, 'user', 'add', `root:${rootPw}`);
    ok(1, 'role', 'add', 'app');
    ok(2, 'role', 'grant-permission', 'app', 'readwrite', 'app/', '--prefix=true');
    ok(0, 'user', 'add', `${alice.username}:${alice.password}`);
    ok(1, 'user', 'grant-role', alice.username, 'app');
    ok(0, 'put', 'other/k', 'before');
    expect(ok(2, 'auth', 'enable')).toMatch(/Authentication Enabled/);
  }, 120_000);

  afterAll(async () => {
    await c?.close();
  });

  it('auth — etcdctl: users, roles and permissions as etcd reports them; refusals with etcd texts', () => {
    const root = `--user=root:${rootPw}`;
    const as = `--user=${alice.username}:${alice.password}`;
    expect(ok(1, root, 'user', 'list')).toMatch(/alice\s+root/);
    expect(ok(2, root, 'user', 'get', 'alice')).toMatch(/Roles: app/);
    expect(ok(0, root, 'role', 'get', 'app')).toMatch(/KV Read:\s+\[app\/, app0\) \(prefix app\/\)/);
    expect(ok(1, as, 'put', 'app/a', '1')).toMatch(/OK/);
    expect(ok(2, as, 'get', 'app/a', '--print-value-only').trim()).toBe('1');
    expect(ctl(0, as, 'put', 'other/k', 'x').out).toMatch(/permission denied/);
    expect(ctl(0, as, 'get', 'other/k').out).toMatch(/permission denied/);
    expect(ctl(0, as, 'get', 'app', '--prefix').out).toMatch(/permission denied/); // wider than app/
    expect(ctl(1, 'get', 'app/a').out).toMatch(/user name is empty/);
    expect(ctl(2, '--user=alice:wrong', 'get', 'app/a').out).toMatch(/authentication failed/);
    expect(ctl(0, as, 'user', 'add', 'mallory:x').out).toMatch(/permission denied/);
    expect(ctl(0, root, 'user', 'delete', 'root').out).toMatch(/invalid auth management/);
    expect(ok(1, root, 'get', 'other/k', '--print-value-only').trim()).toBe('before');
  });

  it('auth — the Conclave client: a user with a prefix holds a Mutex there, and is refused elsewhere', async () => {
    await using kv = await connect({ backend: 'etcd', endpoints: c.endpoints, auth: alice });
    await using session = await Session.create(kv, { ttlSeconds: 10 });
    const lock = await new Mutex(session, 'app/lock').lock();
    expect((await kv.range('app/lock/', { prefix: true })).count).toBe(1);
    await lock.unlock();
    await expect(kv.put('other/x', '1')).rejects.toMatchObject({
      message: expect.stringMatching(/permission denied/),
    });
    // A watch outside the permission is refused at creation.
    const w = kv.watch('other/', { prefix: true });
    await expect(w.ready).rejects.toMatchObject({ message: expect.stringMatching(/permission denied/) });
    await w.close().catch(() => undefined);
    // Without credentials: nothing is read or written.
    await using anon = await connect({ backend: 'etcd', endpoints: [c.endpoints[0]!] });
    await expect(anon.get('app/a')).rejects.toMatchObject({
      message: expect.stringMatching(/user name is empty/),
    });
    await expect(anon.put('app/b', '1')).rejects.toMatchObject({
      message: expect.stringMatching(/user name is empty/),
    });
  });

  it('auth — 1,000 failed Authenticate calls: refused, the member stays up, memory does not grow with them, the right password still works', async () => {
    const pid = c.members[0]!.proc!.pid!;
    const rssMiB = () => {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
      return Number(m?.[1] ?? 0) / 1024;
    };
    const client = new grpc.Client(c.endpoints[0]!, grpc.credentials.createInsecure());
    const authenticate = (password: string) =>
      new Promise<string>((resolve) =>
        client.makeUnaryRequest(
          methods.authenticate,
          encoder(pb.AuthenticateRequest),
          decoder<{ token: string }>(pb.AuthenticateResponse),
          { name: alice.username, password },
          new grpc.Metadata(),
          { deadline: Date.now() + 60_000 },
          (err, r) => resolve(err ? (err.details ?? String(err.code)) : `token ${r!.token}`),
        ),
      );
    /** `n` wrong passwords, `inFlight` at a time; how many got each answer. */
    const wrong = async (n: number, inFlight: number) => {
      const seen = new Map<string, number>();
      for (let sent = 0; sent < n; sent += inFlight) {
        const batch = await Promise.all(
          Array.from({ length: Math.min(inFlight, n - sent) }, (_, i) => authenticate(`wrong-${sent + i}`)),
        );
        for (const a of batch) seen.set(a, (seen.get(a) ?? 0) + 1);
      }
      return seen;
    };
    try {
      const t0 = performance.now();
      const first = await wrong(500, 100);
      const rssHalf = rssMiB();
      const second = await wrong(500, 100);
      const rssEnd = rssMiB();
      const seconds = (performance.now() - t0) / 1000;
      console.log(
        `1,000 failed Authenticate calls in ${seconds.toFixed(1)} s; member RSS ${rssHalf.toFixed(0)} MiB after 500, ${rssEnd.toFixed(0)} MiB after 1,000; answers: ${JSON.stringify([...first, ...second])}`,
      );
      // Every call is refused: a wrong password (the password was checked), or, past the
      // member's bound on password checks at once, "too many requests" (nothing checked).
      for (const seen of [first, second]) {
        let n = 0;
        for (const [answer, k] of seen) {
          expect(answer).toMatch(/authentication failed, invalid user ID or password|too many requests/);
          n += k;
        }
        expect(n).toBe(500);
        expect(
          seen.get('etcdserver: authentication failed, invalid user ID or password') ?? 0,
        ).toBeGreaterThan(0);
      }
      // Refusals keep nothing: the second 500 do not grow the member (a leak of even 64 KiB a
      // call would add 31 MiB).
      expect(rssEnd - rssHalf).toBeLessThan(32);
      expect(await authenticate(alice.password)).toMatch(/^token /);
    } finally {
      client.close();
    }
    expect(ok(0, `--user=root:${rootPw}`, 'get', 'app/a', '--print-value-only').trim()).toBe('1');
  }, 300_000);
});
