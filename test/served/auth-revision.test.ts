/**
 * etcd's apply-time auth check on a `conclave serve` member (in process, with its client API): a
 * request whose caller was checked at auth revision r and that reaches the store after an auth
 * change applied is refused with "etcdserver: revision of auth store is old", and changes
 * nothing — a write held between its check and its proposal (the member's propose is held here),
 * and a read held in its ReadIndex. Without an auth change in between the same held requests
 * succeed (the control). The Conclave etcd client answers the refusal by re-authenticating once
 * and re-sending, as etcd's Go client does.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { Role } from '../../backends/raft/consensus/types.js';
import { Member } from '../../backends/raft/member.js';
import type { ClientServer } from '../../backends/raft/server/grpc.js';
import { startClientServer } from '../../backends/raft/server/grpc.js';
import { bootstrapIdentity, parseInitialCluster, writeIdentity } from '../../backends/raft/server/ids.js';
import type { TransportLogger } from '../../backends/raft/transport/tcp.js';
import { root as pbRoot } from '../../src/protocol/codec.js';
import { freePort } from '../harness/etcd.js';

const quiet: TransportLogger = { info: () => undefined, warn: () => undefined, error: () => undefined };
const t = (n: string): protobuf.Type => pbRoot.lookupType(`etcdserverpb.${n}`);
const B = (s: string) => Buffer.from(s);
const alice = { username: 'alice', password: 'alice-pw-rev' };

let dir: string;
let member: Member;
let server: ClientServer;
let client: grpc.Client;
let rootTok: string;
let aliceTok: string;

function unary<R>(path: string, req: string, res: string, body: object, token?: string): Promise<R> {
  const md = new grpc.Metadata();
  if (token) md.set('token', token);
  const Q = t(req);
  const S = t(res);
  return new Promise((resolve, reject) =>
    client.makeUnaryRequest(
      path,
      (m: object) => Buffer.from(Q.encode(m as Record<string, unknown>).finish()),
      (b: Buffer) => S.toObject(S.decode(b), { longs: Number }) as R,
      body,
      md,
      { deadline: Date.now() + 20_000 },
      (err, r) => (err ? reject(err) : resolve(r as R)),
    ),
  );
}
const auth = <R>(m: string, body: object, token?: string) =>
  unary<R>(
    `/etcdserverpb.Auth/${m === 'Enable' ? 'AuthEnable' : m}`,
    `Auth${m}Request`,
    `Auth${m}Response`,
    body,
    token,
  );
const kvCall = <R>(m: 'Range' | 'Put' | 'Txn', body: object, token?: string) =>
  unary<R>(`/etcdserverpb.KV/${m}`, `${m}Request`, `${m}Response`, body, token);
const outcome = (p: Promise<unknown>) =>
  p.then(
    () => 'ok',
    (e: { code?: number; details?: string }) => `${grpc.status[e.code ?? 2]}: ${e.details}`,
  );

/**
 * Holds the member's next proposal (or ReadIndex) that `match` picks until `release()`; `seen`
 * resolves when one was held.
 */
function hold(what: 'propose' | 'readIndex', match: (cmd: { op?: string; key?: Uint8Array }) => boolean) {
  const node = member.node as unknown as Record<string, (...a: unknown[]) => Promise<unknown>>;
  const original = node[what]!;
  let release!: () => void;
  const released = new Promise<void>((r) => {
    release = r;
  });
  let seen!: () => void;
  const seenP = new Promise<void>((r) => {
    seen = r;
  });
  let taken = false;
  node[what] = function (this: unknown, ...a: unknown[]) {
    if (!taken && match((a[0] ?? {}) as { op?: string; key?: Uint8Array })) {
      taken = true;
      seen();
      return released.then(() => original.apply(this, a));
    }
    return original.apply(this, a);
  };
  return {
    seen: seenP,
    release: () => {
      node[what] = original;
      release();
    },
  };
}
const isPutOf = (key: string) => (c: { op?: string; key?: Uint8Array }) =>
  c.op === 'put' && Buffer.from(c.key ?? []).toString() === key;

describe('served — the auth revision is checked again when a request reaches the store', () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'conclave-authrev-'));
    const peer = await freePort();
    const identity = bootstrapIdentity({
      name: 'a',
      initialCluster: parseInitialCluster(`a=http://127.0.0.1:${peer}`),
      token: 'auth-revision-test',
      clientUrls: ['http://127.0.0.1:2379'],
    });
    await writeIdentity(join(dir, 'a'), identity);
    member = await Member.start({
      identity,
      dataDir: join(dir, 'a'),
      listenPeer: { host: '127.0.0.1', port: peer },
      heartbeatMs: 20,
      electionTimeoutMs: 200,
      limits: { maxRequestBytes: 1.5 * 1024 * 1024, maxTxnOps: 128 },
      log: quiet,
    });
    const until = performance.now() + 10_000;
    while (member.node.raft.role !== Role.Leader) {
      if (performance.now() > until) throw new Error('no leader');
      await new Promise((r) => setTimeout(r, 20));
    }
    server = await startClientServer(member);
    client = new grpc.Client(`127.0.0.1:${server.port}`, grpc.credentials.createInsecure());
    await auth('UserAdd', { name: 'root', password: 'root-pw-rev' });
    await auth('UserGrantRole', { user: 'root', role: 'root' });
    await auth('RoleAdd', { name: 'app' });
    await auth('RoleGrantPermission', {
      name: 'app',
      perm: { permType: 2, key: B('app/'), rangeEnd: B('app0') },
    });
    await auth('UserAdd', { name: alice.username, password: alice.password });
    await auth('UserGrantRole', { user: alice.username, role: 'app' });
    await auth('Enable', {});
    rootTok = (
      await unary<{ token: string }>(
        '/etcdserverpb.Auth/Authenticate',
        'AuthenticateRequest',
        'AuthenticateResponse',
        { name: 'root', password: 'root-pw-rev' },
      )
    ).token;
    aliceTok = (
      await unary<{ token: string }>(
        '/etcdserverpb.Auth/Authenticate',
        'AuthenticateRequest',
        'AuthenticateResponse',
        { name: alice.username, password: alice.password },
      )
    ).token;
  }, 60_000);

  afterAll(async () => {
    client?.close();
    await server?.close();
    await member?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const count = async (key: string) =>
    (await kvCall<{ count?: number }>('Range', { key: B(key) }, rootTok)).count ?? 0;

  it('auth revision — a held put applies when no auth change came between (control)', async () => {
    const h = hold('propose', isPutOf('app/control'));
    const put = outcome(kvCall('Put', { key: B('app/control'), value: B('1') }, aliceTok));
    await h.seen;
    h.release();
    expect(await put).toBe('ok');
    expect(await count('app/control')).toBe(1);
  });

  it('auth revision — a put checked before a role was revoked and proposed after is refused, nothing written', async () => {
    const h = hold('propose', isPutOf('app/slow'));
    const put = outcome(kvCall('Put', { key: B('app/slow'), value: B('1') }, aliceTok));
    await h.seen;
    await auth('UserRevokeRole', { name: alice.username, role: 'app' }, rootTok);
    h.release();
    expect(await put).toBe('INVALID_ARGUMENT: etcdserver: revision of auth store is old');
    expect(await count('app/slow')).toBe(0);
    // Checked afresh now: refused by the permission itself.
    expect(await outcome(kvCall('Put', { key: B('app/slow'), value: B('1') }, aliceTok))).toBe(
      'PERMISSION_DENIED: etcdserver: permission denied',
    );
    await auth('UserGrantRole', { user: alice.username, role: 'app' }, rootTok);
  });

  it('auth revision — a txn and a range held across an auth change are refused too', async () => {
    const ht = hold('propose', (c) => c.op === 'txn');
    const txn = outcome(
      kvCall('Txn', { success: [{ requestPut: { key: B('app/txn'), value: B('1') } }] }, aliceTok),
    );
    await ht.seen;
    await auth('RoleAdd', { name: 'unrelated-1' }, rootTok);
    ht.release();
    expect(await txn).toBe('INVALID_ARGUMENT: etcdserver: revision of auth store is old');
    expect(await count('app/txn')).toBe(0);

    const hr = hold('readIndex', () => true);
    const read = outcome(kvCall('Range', { key: B('app/control') }, aliceTok));
    await hr.seen;
    await auth('RoleAdd', { name: 'unrelated-2' }, rootTok);
    hr.release();
    expect(await read).toBe('INVALID_ARGUMENT: etcdserver: revision of auth store is old');
  });

  it('auth revision — the Conclave etcd client re-authenticates and re-sends a put refused for it', async () => {
    await using kv = await connect({
      backend: 'etcd',
      endpoints: [`127.0.0.1:${server.port}`],
      auth: alice,
    });
    await kv.put('app/warm', '1');
    const h = hold('propose', isPutOf('app/retried'));
    const put = kv.put('app/retried', '1');
    await h.seen;
    await auth('RoleAdd', { name: 'unrelated-3' }, rootTok);
    h.release();
    const { revision } = await put;
    expect((await kv.get('app/retried'))?.modRevision).toBe(revision);
  });
});
