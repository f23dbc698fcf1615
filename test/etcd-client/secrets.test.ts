/**
 * No password or token appears in any error message, cause, details, inspect() output, warning or
 * log line, across every failure path a test can provoke; and close() drops the credentials (a heap
 * snapshot of a closed client holds no password).
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inspect } from 'node:util';
import { writeHeapSnapshot } from 'node:v8';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { connect, type EtcdConnectOptions } from '../../backends/connect.js';
import type { KV } from '../../src/kv.js';
import { Session } from '../../src/session.js';
import { refusedEndpoint, type SilentListener, silentListener } from '../harness/hostile.js';
import { type HostileEtcd, hostileEtcd } from '../harness/hostile-grpc.js';

const password = 'pw-Secr3t-9d41c7';
const token = 'tok-Secr3t-51e0aa';
const secrets = [password, token];

/** Every text an error exposes: message, stack, details, its cause chain, and inspect() output. */
function texts(err: unknown, depth = 0): string[] {
  if (depth > 8 || err === undefined || err === null) return [];
  if (typeof err !== 'object') return [String(err)];
  const e = err as Error & { details?: unknown; cause?: unknown; metadata?: unknown };
  const out = [
    String(e.message),
    String(e.stack),
    String(e),
    inspect(err, { depth: Number.POSITIVE_INFINITY, showHidden: true }),
  ];
  try {
    out.push(JSON.stringify(e.details ?? null), JSON.stringify(err));
  } catch {
    // cyclic: inspect() above covered it
  }
  if (e.metadata) out.push(inspect(e.metadata, { depth: 10, showHidden: true }));
  return [...out, ...texts(e.cause, depth + 1)];
}

function expectNoSecret(what: string, values: string[]): void {
  for (const v of values)
    for (const s of secrets) expect(v.includes(s), `${what} leaks a secret: ${v.slice(0, 300)}`).toBe(false);
}

const failure = (p: Promise<unknown>): Promise<unknown> =>
  p.then(
    async (v) => {
      if (v && typeof v === 'object' && 'close' in v) await (v as KV).close();
      return new Error('it succeeded');
    },
    (e: unknown) => e,
  );

describe('etcd client — secrets never leak into errors, warnings or logs', () => {
  let refusing: HostileEtcd;
  let wrongPassword: HostileEtcd;
  let silent: SilentListener;
  const logged: string[] = [];
  const warnings: string[] = [];
  const onWarning = (w: Error) => warnings.push(inspect(w, { showHidden: true }));

  beforeAll(async () => {
    // Issues the token, then refuses it everywhere as etcd refuses an expired one.
    const stale = { error: { code: grpc.status.UNAUTHENTICATED, details: 'etcdserver: invalid auth token' } };
    refusing = await hostileEtcd({
      unary: {
        authenticate: () => ({ token }),
        range: () => stale,
        put: () => stale,
        leaseGrant: () => ({
          error: { code: grpc.status.PERMISSION_DENIED, details: 'etcdserver: permission denied' },
        }),
      },
      bidi: {
        watch: (call) =>
          call.on('data', () =>
            call.write({
              watchId: -1,
              created: true,
              canceled: true,
              cancelReason: 'etcdserver: invalid auth token',
            }),
          ),
        leaseKeepAlive: (call) =>
          call.on('data', () =>
            call.emit('error', {
              code: grpc.status.UNAUTHENTICATED,
              details: 'etcdserver: invalid auth token',
            }),
          ),
      },
    });
    wrongPassword = await hostileEtcd({
      unary: {
        authenticate: () => ({
          error: {
            code: grpc.status.INVALID_ARGUMENT,
            details: 'etcdserver: authentication failed, invalid user ID or password',
          },
        }),
      },
    });
    silent = await silentListener();
    process.on('warning', onWarning);
    for (const level of ['log', 'info', 'warn', 'error', 'debug'] as const) {
      vi.spyOn(console, level).mockImplementation((...a: unknown[]) => {
        logged.push(a.map((x) => (typeof x === 'string' ? x : inspect(x))).join(' '));
      });
    }
  });

  afterAll(async () => {
    vi.restoreAllMocks();
    process.off('warning', onWarning);
    await refusing?.close();
    await wrongPassword?.close();
    await silent?.close();
  });

  it('every failure path: messages, causes, details, inspect() and logs hold neither the password nor the token', async () => {
    const auth = { username: 'alice', password };
    const errors: Array<[string, unknown]> = [];
    const add = async (what: string, p: Promise<unknown>) => errors.push([what, await failure(p)]);

    await add('URL userinfo', connect(`etcd://alice:${password}@127.0.0.1:2379`));
    await add('URL query', connect(`etcd://127.0.0.1:2379?password=${password}&token=${token}`));
    await add(
      'endpoint userinfo',
      connect({ backend: 'etcd', endpoints: [`http://alice:${password}@127.0.0.1:1`] }),
    );
    await add('unsupported URL', connect(`https://alice:${password}@127.0.0.1:2379`));
    await add(
      'plaintext refused',
      connect({ backend: 'etcd', endpoints: ['10.9.9.9:2379'], auth, plaintextAuth: 'refuse' }),
    );
    await add(
      'tls.cert without key',
      connect({ backend: 'etcd', endpoints: ['127.0.0.1:1'], auth, tls: { cert: 'x' } }),
    );
    await add(
      'empty username',
      connect({ backend: 'etcd', endpoints: ['127.0.0.1:1'], auth: { username: '', password } }),
    );
    await add('wrong password', connect({ backend: 'etcd', endpoints: [wrongPassword.endpoint], auth }));
    await add(
      'refused port',
      connect({ backend: 'etcd', endpoints: [await refusedEndpoint()], auth, dialTimeoutMs: 500 }),
    );
    await add(
      'silent endpoint',
      connect({ backend: 'etcd', endpoints: [silent.endpoint], auth, dialTimeoutMs: 500 }),
    );
    await add(
      'TLS to a plaintext server',
      connect({ backend: 'etcd', endpoints: [`https://${refusing.endpoint}`], auth, dialTimeoutMs: 2000 }),
    );
    const lazy = await connect({
      backend: 'etcd',
      endpoints: [silent.endpoint],
      auth,
      lazy: true,
      callTimeoutMs: 500,
    } satisfies EtcdConnectOptions);
    await add('lazy call, nothing answers', lazy.get('k'));
    await lazy.close();

    const kv = await connect({ backend: 'etcd', endpoints: [refusing.endpoint], auth, callTimeoutMs: 1500 });
    await add('read with a refused token', kv.get('k'));
    await add('write with a refused token', kv.put('k', 'v'));
    await add('permission denied', kv.lease.grant(10));
    await add('watch with a refused token', kv.watch('k').ready);
    await add('keep-alive with a refused token', kv.lease.keepAliveOnce(7n));
    await add('session on a refused keep-alive', Session.create(kv, { lease: 7n }));
    const inspectedOpen = inspect(kv, { depth: Number.POSITIVE_INFINITY, showHidden: true });
    await kv.close();
    await add('call after close', kv.get('k'));
    const inspectedClosed = inspect(kv, { depth: Number.POSITIVE_INFINITY, showHidden: true });
    await new Promise((r) => setImmediate(r));

    expect(errors.length).toBeGreaterThan(15);
    for (const [what, err] of errors) {
      expect(err, what).toMatchObject({ name: 'ConclaveError' });
      expectNoSecret(what, texts(err));
    }
    expectNoSecret('inspect(kv)', [inspectedOpen, inspectedClosed]);
    expectNoSecret('process warnings', warnings);
    expectNoSecret('console output', logged);
    // The token really was issued and used: the scan looked for something that existed.
    expect(refusing.calls.some((c) => c.token === token)).toBe(true);
  }, 60_000);
});

describe('etcd client — close() drops the credentials', () => {
  it('a heap snapshot holds the password while the client is open and not after close()', async () => {
    const hostile = await hostileEtcd({ unary: { authenticate: () => ({ token: 't' }) } });
    const marker = `heapsecret-${randomBytes(6).toString('hex')}`;
    /** Built here and handed over: the test keeps no reference to the password itself. */
    const open = () =>
      connect({
        backend: 'etcd',
        endpoints: [hostile.endpoint],
        auth: { username: 'u', password: `${marker}-${randomBytes(6).toString('hex')}` },
      });
    const holds = (): boolean => {
      const file = writeHeapSnapshot(
        join(tmpdir(), `conclave-heap-${process.pid}-${Date.now()}.heapsnapshot`),
      );
      try {
        return readFileSync(file, 'latin1').includes(`${marker}-`);
      } finally {
        rmSync(file, { force: true });
      }
    };
    try {
      const kv = await open();
      expect(holds()).toBe(true);
      await kv.close();
      // Let the closed channels' pending work settle before the snapshot.
      await new Promise((r) => setTimeout(r, 200));
      expect(holds()).toBe(false);
      expect(kv).toBeDefined();
    } finally {
      await hostile.close();
    }
  }, 60_000);
});
