/**
 * etcd's server-side Lock and Election services (v3lock, v3election) served over an embedded
 * 3-member cluster: a lock taken through the Lock service excludes a Conclave Mutex and
 * `etcdctl lock` on the same name (and the other way round); a cancelled Lock leaves no key;
 * Campaign, Proclaim, Leader, Observe and Resign answer as etcd's do, with etcd's error texts.
 */
import { spawn, spawnSync } from 'node:child_process';
import * as grpc from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect } from '../../backends/connect.js';
import { type EmbeddedCluster, startCluster } from '../../backends/raft/embedded.js';
import { Mutex } from '../../recipes/mutex.js';
import type { KV } from '../../src/kv.js';
import { root } from '../../src/protocol/codec.js';
import { Session } from '../../src/session.js';
import { waitFor } from '../harness/wait.js';
import { type ServedCluster, serveCluster } from './harness.js';

const haveEtcdctl = spawnSync('etcdctl', ['version'], { encoding: 'utf8' }).status === 0;

let cluster: EmbeddedCluster;
let served: ServedCluster;
let kv: KV;
let client: grpc.Client;

interface Reply {
  code: number;
  details: string;
  body?: Record<string, unknown>;
}

const type = (n: string) => root.lookupType(`etcdserverpb.${n}`);
const decode = (n: string, b: Buffer) =>
  type(n).toObject(type(n).decode(b), { longs: String, bytes: String, defaults: false }) as Record<
    string,
    unknown
  >;
const text = (b64: unknown) => Buffer.from(String(b64), 'base64').toString('utf8');

/** A unary call; `cancel()` cancels it from the client side. */
function call(
  path: string,
  req: string,
  res: string,
  body: Record<string, unknown>,
  deadlineMs = 20_000,
): { reply: Promise<Reply>; cancel: () => void } {
  let c: grpc.ClientUnaryCall | undefined;
  const reply = new Promise<Reply>((resolve) => {
    c = client.makeUnaryRequest(
      path,
      (m: Record<string, unknown>) => Buffer.from(type(req).encode(type(req).fromObject(m)).finish()),
      (b: Buffer) => b,
      body,
      new grpc.Metadata(),
      { deadline: Date.now() + deadlineMs },
      (err, out) => {
        if (err) resolve({ code: err.code, details: err.details });
        else resolve({ code: 0, details: '', body: decode(res, out!) });
      },
    );
  });
  return { reply, cancel: () => c!.cancel() };
}

const lock = (name: string, lease: bigint, deadlineMs?: number) =>
  call(
    '/v3lockpb.Lock/Lock',
    'LockRequest',
    'LockResponse',
    { name: Buffer.from(name), lease: lease.toString() },
    deadlineMs,
  );
const unlock = (key: Buffer) =>
  call('/v3lockpb.Lock/Unlock', 'UnlockRequest', 'UnlockResponse', { key }).reply;
const campaign = (name: string, value: string, lease = 0n) =>
  call('/v3electionpb.Election/Campaign', 'CampaignRequest', 'CampaignResponse', {
    name: Buffer.from(name),
    value: Buffer.from(value),
    lease: lease.toString(),
  });
const leaderOf = (name: string) =>
  call('/v3electionpb.Election/Leader', 'LeaderRequest', 'LeaderResponse', { name: Buffer.from(name) }).reply;

async function keysUnder(prefix: string): Promise<string[]> {
  const r = await kv.range(prefix, { prefix: true });
  return r.kvs.map((k) => Buffer.from(k.key).toString());
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('etcd Lock and Election services (v3lock, v3election) on the served client API', () => {
  beforeAll(async () => {
    cluster = await startCluster({ nodes: 3 });
    served = await serveCluster(cluster);
    kv = await connect({ backend: 'etcd', endpoints: served.endpoints });
    client = new grpc.Client(served.endpoints[0]!, grpc.credentials.createInsecure());
  });
  afterAll(async () => {
    client?.close();
    await kv?.close();
    await served?.close();
    await cluster?.close();
  });

  it('Lock excludes a Conclave Mutex on the same name until Unlock; the key is name/<lease hex>', async () => {
    const g = await kv.lease.grant(30);
    const r = await lock('svc-lock', g.id).reply;
    expect(r.code, r.details).toBe(0);
    const key = Buffer.from(String(r.body!.key), 'base64');
    expect(key.toString()).toBe(`svc-lock/${g.id.toString(16)}`);
    expect(Number((r.body!.header as { revision: string }).revision)).toBeGreaterThan(0);

    const s = await Session.create(kv, { ttlSeconds: 10 });
    try {
      const m = new Mutex(s, 'svc-lock');
      const held = await m.tryLock();
      expect(held.isErr()).toBe(true);
      if (held.isErr()) expect(held.error.key).toBe(key.toString());
      const waiting = m.lock();
      let got = false;
      void waiting.then(() => (got = true));
      await sleep(300);
      expect(got).toBe(false);
      const u = await unlock(key);
      expect(u.code, u.details).toBe(0);
      const h = await waiting;
      expect(h.token).toBeGreaterThan(0);
      // Now the Mutex holds it: a Lock through the service waits, and its cancellation leaves no key.
      const g2 = await kv.lease.grant(30);
      const blocked = lock('svc-lock', g2.id);
      let answered = false;
      void blocked.reply.then(() => (answered = true));
      await sleep(300);
      expect(answered).toBe(false);
      expect(await keysUnder('svc-lock/')).toContain(`svc-lock/${g2.id.toString(16)}`);
      blocked.cancel();
      expect((await blocked.reply).code).toBe(grpc.status.CANCELLED);
      const until = Date.now() + 5000;
      while ((await keysUnder('svc-lock/')).includes(`svc-lock/${g2.id.toString(16)}`)) {
        if (Date.now() > until) throw new Error('the cancelled Lock left its key behind');
        await new Promise((r) => setTimeout(r, 50));
      }
      await h.unlock();
      // The lease stays the client's: the service neither revoked it nor keeps it alive now.
      const ttl = await kv.lease.timeToLive(g2.id);
      expect(ttl.ttlSeconds).toBeGreaterThan(0);
      await kv.lease.revoke(g2.id);
    } finally {
      await s.close();
      await kv.lease.revoke(g.id).catch(() => undefined);
    }
  });

  it('Lock with an unknown lease answers etcd\'s "requested lease not found"; empty name: key is not provided', async () => {
    const r = await lock('svc-nolease', 0x7777n).reply;
    expect(r).toMatchObject({
      code: grpc.status.NOT_FOUND,
      details: 'etcdserver: requested lease not found',
    });
    const e = await call('/v3lockpb.Lock/Lock', 'LockRequest', 'LockResponse', { lease: '0' }).reply;
    expect(e).toMatchObject({
      code: grpc.status.INVALID_ARGUMENT,
      details: 'etcdserver: key is not provided',
    });
    expect(await keysUnder('svc-nolease')).toEqual([]);
  });

  it.skipIf(!haveEtcdctl)(
    'Lock excludes etcdctl lock on the same name, and etcdctl lock excludes Lock',
    async () => {
      const g = await kv.lease.grant(30);
      const r = await lock('svc-ctl', g.id).reply;
      expect(r.code, r.details).toBe(0);
      const key = Buffer.from(String(r.body!.key), 'base64');
      let out = '';
      const child = spawn(
        'etcdctl',
        [
          '--endpoints',
          served.endpoints[1]!,
          'lock',
          'svc-ctl',
          '--',
          'sh',
          '-c',
          'echo ctl-got-it; sleep 1',
        ],
        { env: { ...process.env, ETCDCTL_API: '3' }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      child.stdout.on('data', (d: Buffer) => (out += d.toString()));
      const exited = new Promise<number | null>((res) => child.once('exit', (c) => res(c)));
      try {
        // etcdctl queues behind the service's key: nothing runs while the lock is held.
        await sleep(1500);
        expect(out).toBe('');
        expect((await keysUnder('svc-ctl/')).length).toBe(2);
        // While etcdctl holds it (after Unlock), a Lock through the service waits.
        expect((await unlock(key)).code).toBe(0);
        await waitFor(() => out.includes('ctl-got-it'), 10_000, 'etcdctl lock to acquire after Unlock');
        const g2 = await kv.lease.grant(30);
        const second = lock('svc-ctl', g2.id);
        let answered = false;
        void second.reply.then(() => (answered = true));
        // etcdctl holds the lock for a second: the service's Lock is still waiting meanwhile.
        await sleep(300);
        expect(answered).toBe(false);
        expect(await exited).toBe(0);
        const r2 = await second.reply;
        expect(r2.code, r2.details).toBe(0);
        expect(answered).toBe(true);
        expect((await unlock(Buffer.from(String(r2.body!.key), 'base64'))).code).toBe(0);
        await kv.lease.revoke(g2.id);
      } finally {
        if (child.exitCode === null) child.kill('SIGKILL');
        await kv.lease.revoke(g.id).catch(() => undefined);
      }
    },
  );

  it('Campaign, Leader, Proclaim, Observe and Resign', async () => {
    const none = await leaderOf('svc-elect');
    expect(none).toMatchObject({ code: grpc.status.UNKNOWN, details: 'election: no leader' });

    // Observe from before anyone leads: nothing is sent until there is a leader.
    const seen: string[] = [];
    const obs = client.makeServerStreamRequest(
      '/v3electionpb.Election/Observe',
      (m: Record<string, unknown>) =>
        Buffer.from(type('LeaderRequest').encode(type('LeaderRequest').fromObject(m)).finish()),
      (b: Buffer) => b,
      { name: Buffer.from('svc-elect') },
    );
    obs.on('data', (b: Buffer) => {
      const kvOut = decode('LeaderResponse', b).kv as { value?: string } | undefined;
      seen.push(text(kvOut?.value ?? ''));
    });
    obs.on('error', () => undefined);
    try {
      const c = await campaign('svc-elect', 'v1').reply;
      expect(c.code, c.details).toBe(0);
      const leader = c.body!.leader as { name: string; key: string; rev: string; lease: string };
      expect(text(leader.name)).toBe('svc-elect');
      expect(text(leader.key)).toBe(`svc-elect/${BigInt(leader.lease).toString(16)}`);
      expect(Number(leader.rev)).toBeGreaterThan(0);

      const l = await leaderOf('svc-elect');
      expect(l.code, l.details).toBe(0);
      const lkv = l.body!.kv as { key: string; value: string; createRevision: string; lease: string };
      expect(text(lkv.key)).toBe(text(leader.key));
      expect(text(lkv.value)).toBe('v1');
      expect(lkv.createRevision).toBe(leader.rev);
      expect(lkv.lease).toBe(leader.lease);

      // A second candidate queues behind the leader.
      const other = campaign('svc-elect', 'w1');
      let otherWon = false;
      void other.reply.then(() => (otherWon = true));

      const p = await call('/v3electionpb.Election/Proclaim', 'ProclaimRequest', 'ProclaimResponse', {
        leader,
        value: Buffer.from('v2'),
      }).reply;
      expect(p.code, p.details).toBe(0);
      expect(Number((p.body!.header as { revision: string }).revision)).toBeGreaterThan(Number(leader.rev));
      expect(text(((await leaderOf('svc-elect')).body!.kv as { value: string }).value)).toBe('v2');

      const wrong = await call('/v3electionpb.Election/Proclaim', 'ProclaimRequest', 'ProclaimResponse', {
        leader: { ...leader, rev: String(Number(leader.rev) + 1000) },
        value: Buffer.from('x'),
      }).reply;
      expect(wrong).toMatchObject({ code: grpc.status.UNKNOWN, details: 'election: not leader' });
      const missing = await call('/v3electionpb.Election/Proclaim', 'ProclaimRequest', 'ProclaimResponse', {
        value: Buffer.from('x'),
      }).reply;
      expect(missing).toMatchObject({
        code: grpc.status.UNKNOWN,
        details: '"leader" field must be provided',
      });
      expect(otherWon).toBe(false);

      const rs = await call('/v3electionpb.Election/Resign', 'ResignRequest', 'ResignResponse', { leader })
        .reply;
      expect(rs.code, rs.details).toBe(0);
      const o = await other.reply;
      expect(o.code, o.details).toBe(0);
      expect(text(((await leaderOf('svc-elect')).body!.kv as { value: string }).value)).toBe('w1');
      await waitFor(() => seen.includes('w1'), 5000, 'Observe to report the new leader');
      expect(seen.slice(0, 3)).toEqual(['v1', 'v2', 'w1']);

      // Resigning again (no longer the leader) is no error, as in etcd.
      const again = await call('/v3electionpb.Election/Resign', 'ResignRequest', 'ResignResponse', {
        leader,
      }).reply;
      expect(again.code, again.details).toBe(0);
      const ol = o.body!.leader as Record<string, unknown>;
      expect(
        (await call('/v3electionpb.Election/Resign', 'ResignRequest', 'ResignResponse', { leader: ol }).reply)
          .code,
      ).toBe(0);
      expect((await leaderOf('svc-elect')).details).toBe('election: no leader');
    } finally {
      obs.cancel();
    }
  });

  it("the JSON gateway routes /v3/election/* and /v3/lock/* to the services, with etcd's JSON", async () => {
    const post = async (path: string, body: unknown) => {
      const r = await fetch(`http://${served.endpoints[2]}${path}`, {
        method: 'POST',
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(15_000),
      });
      return { status: r.status, text: await r.text() };
    };
    const b64 = (t: string) => Buffer.from(t).toString('base64');
    // As etcd's e2e TestV3CurlCampaign: campaign with no lease, proclaim with the leader key it got.
    const c = await post('/v3/election/campaign', { name: b64('/election-prefix'), value: b64('v1') });
    expect(c.status, c.text).toBe(200);
    expect(c.text).toContain('"leader":{"name":"');
    const leader = (JSON.parse(c.text) as { leader: Record<string, string> }).leader;
    const p = await post('/v3/election/proclaim', { leader, value: b64('v2') });
    expect(p.status, p.text).toBe(200);
    expect(p.text).toContain('"revision":');
    const l = await post('/v3/election/leader', { name: b64('/election-prefix') });
    expect(JSON.parse(l.text).kv.value).toBe(b64('v2'));
    for (const [route, body] of [
      ['proclaim', { value: b64('v2') }],
      ['resign', {}],
    ] as const) {
      const m = await post(`/v3/election/${route}`, body);
      expect(m.text).toContain(
        '{"error":"\\"leader\\" field must be provided","message":"\\"leader\\" field must be provided","code":2}',
      );
    }
    // Observe answers the current leader as a stream line.
    const ac = new AbortController();
    const o = await fetch(`http://${served.endpoints[2]}/v3/election/observe`, {
      method: 'POST',
      body: JSON.stringify({ name: b64('/election-prefix') }),
      signal: ac.signal,
    });
    const reader = o.body!.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    ac.abort();
    expect(JSON.parse(first).result.kv.value).toBe(b64('v2'));
    expect((await post('/v3/election/resign', { leader })).status).toBe(200);

    const g = await kv.lease.grant(30);
    const lk = await post('/v3/lock/lock', { name: b64('gw-lock'), lease: g.id.toString() });
    expect(lk.status, lk.text).toBe(200);
    const key = (JSON.parse(lk.text) as { key: string }).key;
    expect(Buffer.from(key, 'base64').toString()).toBe(`gw-lock/${g.id.toString(16)}`);
    expect((await post('/v3/lock/unlock', { key })).status).toBe(200);
    expect(await keysUnder('gw-lock/')).toEqual([]);
    await kv.lease.revoke(g.id);
  });
});
