import { type ChildProcess, execFileSync, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect } from '../../backends/connect.js';
import { Mutex } from '../../recipes/index.js';
import type { KV } from '../../src/kv.js';
import { decoder, encoder, methods, pb } from '../../src/protocol/codec.js';
import { Session } from '../../src/session.js';
import type { WatchBatch } from '../../src/types.js';
import { etcdBinary, freePort, minTtlFor } from '../harness/etcd.js';
import { startServed } from '../harness/served.js';

const etcdctl = spawnSync('etcdctl', ['version'], { env: { ...process.env, ETCDCTL_API: '3' } }).status === 0;
const available = process.env.REQUIRE_ETCD === '1' || (!!etcdBinary() && etcdctl);
/** The served member needs only etcdctl (for the setup). */
const servedAvailable = etcdctl || process.env.REQUIRE_ETCD === '1';

const rootPassword = 'root-secret-3f9';
const alice = { username: 'alice', password: 'alice-secret-7c1' };
const text = (b: Uint8Array | undefined) => (b === undefined ? undefined : new TextDecoder().decode(b));

interface AuthEtcd {
  readonly endpoint: string;
  ctl(...args: string[]): string;
  /** Stops the member and starts it again on the same data dir and ports (tokens are lost). */
  restart(): Promise<void>;
  stop(): Promise<void>;
}

async function waitHealthy(endpoint: string): Promise<void> {
  const until = Date.now() + 15_000;
  while (true) {
    try {
      const r = await fetch(`http://${endpoint}/health`, { signal: AbortSignal.timeout(1000) });
      if (((await r.json()) as { health?: string }).health === 'true') return;
    } catch (err) {
      if (Date.now() > until) throw err;
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** One etcd member (loopback, temporary data dir, short election timeout), stopped by PID. */
async function startEtcdProcess(name: string, extra: string[]): Promise<AuthEtcd> {
  const dir = mkdtempSync(join(tmpdir(), `conclave-${name}-`));
  const client = await freePort();
  const peer = await freePort();
  const endpoint = `127.0.0.1:${client}`;
  const args = [
    '--name',
    name,
    '--data-dir',
    join(dir, 'data'),
    '--listen-client-urls',
    `http://${endpoint}`,
    '--advertise-client-urls',
    `http://${endpoint}`,
    '--listen-peer-urls',
    `http://127.0.0.1:${peer}`,
    '--initial-advertise-peer-urls',
    `http://127.0.0.1:${peer}`,
    '--initial-cluster',
    `${name}=http://127.0.0.1:${peer}`,
    '--heartbeat-interval',
    '50',
    '--election-timeout',
    '250',
    // The cheapest bcrypt cost etcd accepts: Authenticate checks the password with it.
    '--bcrypt-cost',
    '4',
    '--logger',
    'zap',
    '--log-level',
    'error',
    ...extra,
  ];
  let child: ChildProcess = spawn('etcd', args, { stdio: 'ignore' });
  const kill = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await exited;
    }
  };
  const stop = async () => {
    await kill();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    await waitHealthy(endpoint);
  } catch (err) {
    await stop();
    throw err;
  }
  const ctl = (...a: string[]) =>
    execFileSync('etcdctl', ['--endpoints', endpoint, ...a], {
      env: { ...process.env, ETCDCTL_API: '3' },
      encoding: 'utf8',
      stdio: 'pipe',
    });
  const restart = async () => {
    await kill();
    child = spawn('etcd', args, { stdio: 'ignore' });
    await waitHealthy(endpoint);
  };
  return { endpoint, ctl, restart, stop };
}

/**
 * One `conclave serve` member with the same interface: etcd's flags (`--auth-token simple
 * --auth-token-ttl N` are the same names), etcdctl for the setup, restart on its data dir.
 */
async function startServedProcess(_name: string, extra: string[]): Promise<AuthEtcd> {
  const c = await startServed({ members: 1, extraArgs: extra, electionTimeoutMs: 250 });
  const endpoint = c.endpoints[0]!;
  const ctl = (...a: string[]) =>
    execFileSync('etcdctl', ['--endpoints', endpoint, '--command-timeout=30s', ...a], {
      env: { ...process.env, ETCDCTL_API: '3' },
      encoding: 'utf8',
      stdio: 'pipe',
    });
  return {
    endpoint,
    ctl,
    restart: async () => {
      await c.stop(0);
      await c.restart(0);
      await c.waitLeader(30_000);
    },
    stop: () => c.close(),
  };
}

/** Where each suite runs: real etcd, and a `conclave serve` member (the same tests, unchanged). */
const targets = [
  { name: 'etcd', available, start: startEtcdProcess },
  { name: 'conclave serve', available: servedAvailable, start: startServedProcess },
] as const;

/** root (all keys) and alice (role `app`: readwrite on the prefix app/ only); then auth enable. */
function enableAuth(e: AuthEtcd): void {
  e.ctl('user', 'add', `root:${rootPassword}`);
  e.ctl('role', 'add', 'app');
  e.ctl('role', 'grant-permission', 'app', 'readwrite', 'app/', '--prefix=true');
  e.ctl('user', 'add', `${alice.username}:${alice.password}`);
  e.ctl('user', 'grant-role', alice.username, 'app');
  e.ctl('auth', 'enable');
}

async function firstBatch(iter: AsyncIterator<WatchBatch>): Promise<WatchBatch> {
  const r = await iter.next();
  if (r.done) throw new Error('the watch ended');
  return r.value;
}

for (const target of targets)
  describe.skipIf(!target.available)(
    `etcd client on ${target.name} — username/password authentication`,
    () => {
      let etcd: AuthEtcd;
      /** Connected with root's credentials while auth was still disabled (no token). */
      let early: KV;
      const root = () => ({ username: 'root', password: rootPassword });

      beforeAll(async () => {
        etcd = await target.start('auth', []);
        early = await connect({ backend: 'etcd', endpoints: [etcd.endpoint], auth: root() });
        await early.put('early/k', 'before auth was enabled');
        enableAuth(etcd);
      }, 60_000);

      afterAll(async () => {
        await early?.close();
        await etcd?.stop();
      });

      it('auth — with the right credentials put, get, txn, watch, leases and a Session-held Mutex work', async () => {
        await using kv = await connect({ backend: 'etcd', endpoints: [etcd.endpoint], auth: root() });
        const w = kv.watch('ok/', { prefix: true });
        const events = w[Symbol.asyncIterator]();
        await w.ready;
        const { revision } = await kv.put('ok/a', '1');
        expect(text((await kv.get('ok/a'))?.value)).toBe('1');
        const t = await kv.txn({
          compare: [{ key: 'ok/a', target: 'value', result: '=', value: '1' }],
          success: [{ type: 'put', key: 'ok/b', value: '2' }],
          failure: [],
        });
        expect(t.succeeded).toBe(true);
        const first = await firstBatch(events);
        expect(first.events[0]!.kv.modRevision).toBe(revision);

        const lease = await kv.lease.grant(5);
        expect((await kv.lease.keepAliveOnce(lease.id)).ttlSeconds).toBeGreaterThan(0);
        await kv.lease.revoke(lease.id);

        await using session = await Session.create(kv, { ttlSeconds: minTtlFor(50, 250) + 4 });
        const lock = await new Mutex(session, 'ok/lock').lock();
        expect((await kv.range('ok/lock/', { prefix: true })).count).toBe(1);
        await lock.unlock();
        expect((await kv.range('ok/lock/', { prefix: true })).count).toBe(0);
        await w.close();
      });

      it('auth — a wrong password or an unknown user makes connect reject unauthenticated, without the password', async () => {
        const wrong = 'not-the-password-91';
        const err = await connect({
          backend: 'etcd',
          endpoints: [etcd.endpoint],
          auth: { username: alice.username, password: wrong },
        }).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(err).toMatchObject({ name: 'ConclaveError', code: 'unauthenticated' });
        expect((err as Error).message).toMatch(/alice.*authentication failed/);
        expect(inspect(err, { depth: 10 })).not.toContain(wrong);
        await expect(
          connect({
            backend: 'etcd',
            endpoints: [etcd.endpoint],
            auth: { username: 'nobody', password: wrong },
          }),
        ).rejects.toMatchObject({ code: 'unauthenticated' });
      });

      it('auth — malformed credentials are refused before any call, never echoing the password', async () => {
        for (const auth of [
          { username: '', password: 'p' },
          { username: 'alice', password: '' },
          { username: 'alice' },
          'alice:secret',
          null,
        ]) {
          const err = await connect({
            backend: 'etcd',
            endpoints: [etcd.endpoint],
            auth: auth as never,
          }).then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(err).toMatchObject({ code: 'invalid-argument' });
          expect((err as Error).message).not.toContain('secret');
        }
      });

      it('auth — without credentials an auth-enabled etcd refuses calls and watches with a ConclaveError', async () => {
        await using kv = await connect({ backend: 'etcd', endpoints: [etcd.endpoint] });
        for (const call of [
          () => kv.put('ok/anon', 'x'),
          () => kv.get('ok/a'),
          () => kv.watch('ok/a').ready,
        ]) {
          const err = await call().then(
            () => undefined,
            (e: unknown) => e,
          );
          expect(err).toMatchObject({ name: 'ConclaveError' });
          expect(['unauthenticated', 'permission-denied']).toContain((err as { code: string }).code);
        }
      });

      it('auth — a user limited to a prefix is refused outside it (permission-denied) and works inside it', async () => {
        await using kv = await connect({ backend: 'etcd', endpoints: [etcd.endpoint], auth: alice });
        await kv.put('app/x', 'mine');
        expect(text((await kv.get('app/x'))?.value)).toBe('mine');
        await expect(kv.put('other/x', 'no')).rejects.toMatchObject({ code: 'permission-denied' });
        await expect(kv.get('other/x')).rejects.toMatchObject({ code: 'permission-denied' });
        await expect(
          kv.txn({ compare: [], success: [{ type: 'put', key: 'other/y', value: 'no' }], failure: [] }),
        ).rejects.toMatchObject({ code: 'permission-denied' });

        // A refused watch leaves the live one alone (the first watch has server id 0; etcd 3.4.23
        // refuses with watch id -1, earlier releases echoed the request's id, 0).
        const inside = kv.watch('app/w');
        const events = inside[Symbol.asyncIterator]();
        await inside.ready;
        const outside = kv.watch('other/w');
        await expect(outside.ready).rejects.toMatchObject({ code: 'permission-denied' });
        const { revision } = await kv.put('app/w', 'seen');
        expect((await firstBatch(events)).events[0]!.kv.modRevision).toBe(revision);
        await inside.close();

        await using session = await Session.create(kv, { ttlSeconds: minTtlFor(50, 250) + 4 });
        const lock = await new Mutex(session, 'app/lock').lock();
        await lock.unlock();
      });

      it('auth — a client connected before auth was enabled authenticates on its next call', async () => {
        const { revision } = await early.put('early/k', 'after auth was enabled');
        expect((await early.get('early/k'))?.modRevision).toBe(revision);
      });
    },
  );

/** A raw unary call with an explicit token, beside the client under test. */
function rawCall<Res>(
  client: grpc.Client,
  path: string,
  types: [protobuf.Type, protobuf.Type],
  req: object,
  token?: string,
): Promise<Res> {
  const md = new grpc.Metadata();
  if (token) md.set('token', token);
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(path, encoder(types[0]), decoder<Res>(types[1]), req, md, (err, res) =>
      err ? reject(err) : resolve(res as Res),
    ),
  );
}

for (const target of targets)
  describe.skipIf(!target.available)(`etcd client on ${target.name} — auth tokens that expire`, () => {
    const ttlSeconds = 2;
    let etcd: AuthEtcd;

    beforeAll(async () => {
      etcd = await target.start('authttl', [
        '--auth-token',
        'simple',
        '--auth-token-ttl',
        String(ttlSeconds),
      ]);
      enableAuth(etcd);
    }, 60_000);

    afterAll(async () => etcd?.stop());

    it('auth — after the simple token expired, calls re-authenticate once (shared) and watches re-open with the new token', async () => {
      await using kv = await connect({ backend: 'etcd', endpoints: [etcd.endpoint], auth: alice });
      const before = kv.watch('app/ttl/', { prefix: true });
      const beforeEvents = before[Symbol.asyncIterator]();
      await before.ready;
      await kv.put('app/ttl/start', '0');
      await firstBatch(beforeEvents);

      // A token of our own, fetched now and left unused like the client's: once etcd refuses it,
      // the client's token has expired too (a simple token lives --auth-token-ttl after its last use).
      const raw = new grpc.Client(etcd.endpoint, grpc.credentials.createInsecure());
      try {
        const { token } = await rawCall<{ token: string }>(
          raw,
          methods.authenticate,
          [pb.AuthenticateRequest, pb.AuthenticateResponse],
          { name: alice.username, password: alice.password },
        );
        await new Promise((r) => setTimeout(r, (ttlSeconds + 2) * 1000));
        await expect(
          rawCall(
            raw,
            methods.range,
            [pb.RangeRequest, pb.RangeResponse],
            { key: Buffer.from('app/x') },
            token,
          ),
        ).rejects.toMatchObject({ details: expect.stringMatching(/invalid auth token/) });
      } finally {
        raw.close();
      }

      const spy = vi.spyOn(grpc.Client.prototype, 'makeUnaryRequest');
      try {
        const puts = await Promise.all(
          Array.from({ length: 8 }, (_, i) => kv.put(`app/ttl/k${i}`, String(i))),
        );
        expect(puts).toHaveLength(8);
        // The stream's token expired too: a new watch is refused, then re-created on a re-opened stream.
        const after = kv.watch('app/ttl/late');
        const afterEvents = after[Symbol.asyncIterator]();
        await after.ready;
        const { revision } = await kv.put('app/ttl/late', 'x');
        expect((await firstBatch(afterEvents)).events[0]!.kv.modRevision).toBe(revision);
        // The watch from before the expiry moved to the new stream without a gap.
        const seen: number[] = [];
        while (seen.length === 0 || seen[seen.length - 1]! < revision) {
          for (const e of (await firstBatch(beforeEvents)).events) seen.push(e.kv.modRevision);
        }
        expect(seen).toEqual([...puts.map((p) => p.revision).sort((a, b) => a - b), revision]);
        const authenticates = spy.mock.calls.filter((c) => c[0] === methods.authenticate);
        expect(authenticates).toHaveLength(1);
        await after.close();
      } finally {
        spy.mockRestore();
      }
      await before.close();
    }, 30_000);
    it('auth — after etcd restarts (every simple token lost), calls and the broken watch stream recover with a fresh token', async () => {
      await using kv = await connect({ backend: 'etcd', endpoints: [etcd.endpoint], auth: alice });
      const w = kv.watch('app/rs/', { prefix: true });
      const events = w[Symbol.asyncIterator]();
      await w.ready;
      await kv.put('app/rs/a', '1');
      await firstBatch(events);

      await etcd.restart();
      // A get is retried through the reconnection, then refused for the lost token and re-sent.
      const until = Date.now() + 15_000;
      while (true) {
        try {
          await kv.get('app/rs/a');
          break;
        } catch (err) {
          if (Date.now() > until) throw err;
          await new Promise((r) => setTimeout(r, 100));
        }
      }
      const { revision } = await kv.put('app/rs/b', '2');
      // The watch stream broke with the restart and was re-opened with a token etcd accepts.
      expect((await firstBatch(events)).events.map((e) => e.kv.modRevision)).toEqual([revision]);
      await w.close();
    }, 40_000);
  });
