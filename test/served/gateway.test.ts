/**
 * The JSON gateway of `conclave serve` (backends/raft/server/gateway.ts) against real etcd:
 * - etcd's documented curl examples (put, range with a prefix, txn, lease grant / time-to-live /
 *   revoke, delete, watch replayed from a start revision) run with `curl` against a served cluster
 *   and against etcd 3.4, and the normalized JSON answers are equal (differential);
 * - a watch over HTTP delivers the same events as a watch over gRPC on the same member;
 * - bad input (invalid JSON, wrong types, unknown fields, invalid base64, oversized bodies) is a 400
 *   (413 for an oversized body) with a message naming the problem, and the member keeps serving;
 * - GET /health and /version; GET /metrics and --listen-metrics-urls, in test/served/metrics.test.ts.
 */
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { RawClient, waitFor } from '../server/raw.js';

const hasEtcd = !!etcdBinary();

let served: ServedCluster;
let etcd: EtcdCluster | undefined;

beforeAll(async () => {
  [served, etcd] = await Promise.all([
    startServed({ members: 3, extraArgs: ['--max-request-bytes=4096'] }),
    hasEtcd ? startEtcd({ members: 1 }) : Promise.resolve(undefined),
  ]);
}, 120_000);
afterAll(async () => {
  await Promise.all([served?.close(), etcd?.stop()]);
});

const b64 = (s: string) => Buffer.from(s).toString('base64');
const unb64 = (s: string | undefined) => Buffer.from(s ?? '', 'base64').toString();

interface Curl {
  status: number;
  body: string;
}

/**
 * `curl -X POST <endpoint><path> -d <body>` as etcd's docs write it; `maxSeconds` ends a streaming
 * request (curl then exits 28 with what it received, which is the answer here).
 */
async function curl(endpoint: string, path: string, body?: string, maxSeconds = 10): Promise<Curl> {
  const args = ['-sS', '-N', '-m', String(maxSeconds), '-w', '\n%{http_code}', `http://${endpoint}${path}`];
  // The body goes through stdin (`-d @-` keeps curl's form; a large one would not fit in argv).
  if (body !== undefined) args.push('-X', 'POST', '--data-binary', '@-');
  const child = spawn('curl', args, { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d: Buffer) => {
    out += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    err += d.toString();
  });
  child.stdin.end(body ?? '');
  const code = await new Promise<number | null>((resolve) => child.once('close', resolve));
  // 28: curl's own time limit ended a streaming answer; what arrived is the answer.
  if (code !== 0 && code !== 28) throw new Error(`curl ${path} exited ${code}: ${err}`);
  const cut = out.lastIndexOf('\n');
  return { status: Number(out.slice(cut + 1)), body: out.slice(0, cut) };
}

const json = (c: Curl): Record<string, unknown> => JSON.parse(c.body) as Record<string, unknown>;

/**
 * What may differ between two clusters answering the same requests: member and cluster IDs and the
 * Raft term (each cluster's own), a lease's remaining TTL by a second or two (time passes), and
 * revisions, which are kept relative to `base` (the revision before the test's first write).
 */
function normalize(v: unknown, base: number, key = ''): unknown {
  if (Array.isArray(v)) return v.map((x) => normalize(x, base));
  if (v !== null && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      if (k === 'cluster_id' || k === 'member_id' || k === 'raft_term') continue;
      out[k] = normalize(x, base, k);
    }
    return out;
  }
  if (typeof v === 'string' && /revision$/.test(key)) return Number(v) === 0 ? v : `base+${Number(v) - base}`;
  if (key === 'TTL' && typeof v === 'string' && Number(v) > 50) return 'about 60';
  return v;
}

/** Flattens watch response lines to their events, each as one comparable line. */
function events(lines: Record<string, unknown>[]): string[] {
  const out: string[] = [];
  for (const l of lines) {
    const r = l.result as { events?: Record<string, unknown>[] } | undefined;
    for (const e of r?.events ?? []) {
      const kv = e.kv as Record<string, string>;
      const prev = e.prev_kv as Record<string, string> | undefined;
      out.push(
        `${(e.type as string | undefined) ?? 'PUT'} ${unb64(kv.key)}=${unb64(kv.value)} mod ${kv.mod_revision} ver ${kv.version ?? '0'}${prev ? ` prev ${unb64(prev.value)}` : ''}`,
      );
    }
  }
  return out;
}

const lines = (body: string) =>
  body
    .split('\n')
    .filter((l) => l.trim() !== '')
    .map((l) => JSON.parse(l) as Record<string, unknown>);

/** The etcd docs' curl walk-through, run on one endpoint; returns every answer in order. */
async function walkThrough(endpoint: string, p: string): Promise<{ answers: Curl[]; base: number }> {
  const answers: Curl[] = [];
  const post = async (path: string, body: string) => {
    const c = await curl(endpoint, path, body);
    answers.push(c);
    return c;
  };
  const start = json(await curl(endpoint, '/v3/kv/range', JSON.stringify({ key: b64(`${p}none`) })));
  const base = Number((start.header as { revision: string }).revision);
  await post('/v3/kv/put', JSON.stringify({ key: b64(`${p}foo`), value: b64('bar') }));
  await post('/v3/kv/put', JSON.stringify({ key: b64(`${p}foo2`), value: b64('bar2'), prev_kv: true }));
  await post('/v3/kv/range', JSON.stringify({ key: b64(`${p}foo`) }));
  // Range with a prefix: range_end is the key with its last byte + 1 ('foo' -> 'fop').
  await post('/v3/kv/range', JSON.stringify({ key: b64(`${p}foo`), range_end: b64(`${p}fop`) }));
  await post(
    '/v3/kv/range',
    JSON.stringify({ key: b64(`${p}foo`), rangeEnd: b64(`${p}fop`), countOnly: true }),
  );
  await post(
    '/v3/kv/range',
    JSON.stringify({
      key: b64(`${p}foo`),
      range_end: b64(`${p}fop`),
      limit: 1,
      sort_order: 'DESCEND',
      sort_target: 'KEY',
    }),
  );
  // txn: compare the create revision of foo (as etcd's docs do), then put or read.
  const created = String(base + 1);
  await post(
    '/v3/kv/txn',
    JSON.stringify({
      compare: [{ target: 'CREATE', key: b64(`${p}foo`), createRevision: created }],
      success: [{ requestPut: { key: b64(`${p}foo`), value: b64('bar3') } }],
    }),
  );
  await post(
    '/v3/kv/txn',
    JSON.stringify({
      compare: [{ result: 'EQUAL', target: 'VALUE', key: b64(`${p}foo`), value: b64('nope') }],
      success: [{ request_range: { key: b64(`${p}foo`) } }],
      failure: [
        { request_range: { key: b64(`${p}foo`), range_end: b64(`${p}fop`) } },
        { request_delete_range: { key: b64(`${p}foo2`), prev_kv: true } },
      ],
    }),
  );
  // Leases: grant with a chosen ID (IDs are otherwise each cluster's own), attach, ask, revoke.
  const id = 7_000_000_000_000 + (p.length % 100);
  await post('/v3/lease/grant', JSON.stringify({ TTL: 60, ID: id }));
  await post('/v3/kv/put', JSON.stringify({ key: b64(`${p}leased`), value: b64('x'), lease: String(id) }));
  await post('/v3/lease/timetolive', JSON.stringify({ ID: id, keys: true }));
  await post('/v3/lease/revoke', JSON.stringify({ ID: String(id) }));
  await post('/v3/lease/revoke', JSON.stringify({ ID: String(id) }));
  await post('/v3/lease/timetolive', JSON.stringify({ ID: id }));
  await post('/v3/kv/range', JSON.stringify({ key: b64(`${p}leased`) }));
  // A lease ID above 2^53 as a bare JSON number: read exactly from its digits (as Go reads it),
  // answered as a string; the same ID as a string works the same.
  const big = `${2n ** 53n + 1n + BigInt(p.length % 100)}`;
  await post('/v3/lease/grant', `{"TTL": 60, "ID": ${big}}`);
  await post('/v3/lease/timetolive', `{"ID": ${big}}`);
  await post('/v3/lease/revoke', `{"ID": "${big}"}`);
  // Fields the message does not have are ignored (nested ones too: a misspelt `value` is an empty
  // value), as etcd's gateway ignores them; `null` is the empty request.
  await post('/v3/kv/put', JSON.stringify({ key: b64(`${p}unknown`), value: b64('v'), bogus: { a: [1] } }));
  await post(
    '/v3/kv/txn',
    JSON.stringify({ success: [{ requestPut: { key: b64(`${p}unknown`), vale: b64('x') } }], extra: 1 }),
  );
  await post('/v3/kv/range', JSON.stringify({ key: b64(`${p}unknown`), rangeend: b64(`${p}zzz`) }));
  await post('/v3/kv/range', 'null');
  // A unary body's first JSON value is the request; etcd's decoder does not read past it.
  await post('/v3/kv/range', `${JSON.stringify({ key: b64(`${p}unknown`) })} {"key": 5} trailing`);
  // Enums by number as well as by name (a number in a string is refused: the bad-input cases).
  await post('/v3/kv/range', JSON.stringify({ key: b64(`${p}unknown`), sort_order: 2, sort_target: 'KEY' }));
  await post(
    '/v3/kv/deleterange',
    JSON.stringify({ key: b64(`${p}foo`), range_end: b64(`${p}fop`), prev_kv: true }),
  );
  await post('/v3/kv/range', JSON.stringify({ key: b64(`${p}foo`), range_end: b64(`${p}fop`) }));
  await post('/v3/kv/range', JSON.stringify({ key: b64('') }));
  await post('/v3/kv/compaction', JSON.stringify({ revision: String(base + 1000) }));
  return { answers, base };
}

describe.skipIf(!hasEtcd)('the JSON gateway beside etcd 3.4 (curl, differential)', () => {
  it("etcd's curl examples answer the same JSON, field for field", async () => {
    const p = `gw-diff-${Date.now()}/`;
    const [a, e] = await Promise.all([
      walkThrough(served.endpoints[0]!, p),
      walkThrough(etcd!.endpoints[0]!, p),
    ]);
    expect(a.answers.length).toBe(e.answers.length);
    for (let i = 0; i < a.answers.length; i++) {
      const ours = a.answers[i]!;
      const theirs = e.answers[i]!;
      expect({ i, status: ours.status }).toEqual({ i, status: theirs.status });
      expect({ i, body: normalize(json(ours), a.base) }).toEqual({
        i,
        body: normalize(json(theirs), e.base),
      });
    }
    // The walk-through really exercised something: a prefix read of two keys, a succeeded txn.
    expect((json(a.answers[3]!).kvs as unknown[]).length).toBe(2);
    expect(json(a.answers[6]!).succeeded).toBe(true);
    const leases = a.answers.filter((x) =>
      x.body.includes(`"ID":"${2n ** 53n + 1n + BigInt(p.length % 100)}"`),
    );
    expect(leases.length).toBe(2); // granted, time-to-live: the ID came through exactly
  }, 120_000);

  it('a watch replayed from a past start_revision sends the same events in the same responses, then stays open', async () => {
    const p = `gw-watch-${Date.now()}/`;
    const one = async (ep: string) => {
      const first = json(
        await curl(ep, '/v3/kv/put', JSON.stringify({ key: b64(`${p}k`), value: b64('v1') })),
      );
      const rev = Number((first.header as { revision: string }).revision);
      await curl(ep, '/v3/kv/put', JSON.stringify({ key: b64(`${p}k`), value: b64('v2') }));
      await curl(ep, '/v3/kv/deleterange', JSON.stringify({ key: b64(`${p}k`) }));
      await curl(ep, '/v3/kv/put', JSON.stringify({ key: b64(`${p}k2`), value: b64('v3') }));
      // Stays open: curl's own time limit ends it (exit 28), with everything received so far.
      const started = performance.now();
      const w = await curl(
        ep,
        '/v3/watch',
        JSON.stringify({
          create_request: {
            key: b64(p),
            range_end: b64(p.replace(/\/$/, '0')),
            start_revision: String(rev),
            prev_kv: true,
          },
        }),
        3,
      );
      expect(performance.now() - started).toBeGreaterThan(2500);
      const ls = lines(w.body);
      const created = ls[0]!.result as Record<string, unknown>;
      return {
        status: w.status,
        created: normalize(created, rev),
        // How the replay is grouped into responses: etcd sends the history of an unsynced watcher
        // in one response (up to 1000 revisions) at the current revision, not one per revision.
        responses: ls.slice(1).map((l) => {
          const r = l.result as { header: { revision: string }; events?: unknown[] };
          return `header +${Number(r.header.revision) - rev}, ${r.events?.length ?? 0} events`;
        }),
        events: events(ls).map((x) => x.replace(/mod (\d+)/, (_, m: string) => `mod +${Number(m) - rev}`)),
      };
    };
    const [ours, theirs] = await Promise.all([one(served.endpoints[1]!), one(etcd!.endpoints[0]!)]);
    expect(ours.events).toEqual(
      [
        'PUT k=v1 mod +0 ver 1',
        'PUT k=v2 mod +1 ver 2 prev v1',
        'DELETE k= mod +2 ver 0 prev v2',
        'PUT k2=v3 mod +3 ver 1',
      ].map((x) => x.replace(/^(\w+) /, `$1 ${p}`)),
    );
    expect(ours.responses).toEqual(['header +3, 4 events']);
    expect(ours).toEqual(theirs);
  }, 60_000);
});

describe('the JSON gateway of conclave serve', () => {
  it('a watch over HTTP delivers the same events as a watch over gRPC on the same member', async () => {
    const ep = served.endpoints[2]!;
    const p = `gw-same-${Date.now()}/`;
    const grpcClient = new RawClient(ep);
    const probe = grpcClient.watch();
    probe.send({
      createRequest: { key: Buffer.from(p), rangeEnd: Buffer.from(p.replace(/\/$/, '0')), prevKv: true },
    });
    const ac = new AbortController();
    const http = await fetch(`http://${ep}/v3/watch`, {
      method: 'POST',
      body: JSON.stringify({
        create_request: { key: b64(p), range_end: b64(p.replace(/\/$/, '0')), prev_kv: true },
      }),
      signal: ac.signal,
    });
    expect(http.status).toBe(200);
    const reader = http.body!.getReader();
    let text = '';
    const pump = (async () => {
      for (;;) {
        const { value, done } = await reader.read().catch(() => ({ value: undefined, done: true }));
        if (done) return;
        text += Buffer.from(value!).toString();
      }
    })();
    try {
      await waitFor(
        () => probe.responses.length >= 1 && text.includes('"created":true'),
        10_000,
        'both watches created',
      );
      for (let i = 0; i < 20; i++) {
        const key = `${p}k${i % 3}`;
        if (i % 5 === 4) await curl(ep, '/v3/kv/deleterange', JSON.stringify({ key: b64(key) }));
        else await curl(ep, '/v3/kv/put', JSON.stringify({ key: b64(key), value: b64(`v${i}`) }));
      }
      const fromGrpc = () =>
        probe.responses.flatMap((r) =>
          ((r.events as Record<string, unknown>[] | undefined) ?? []).map((e) => {
            const kv = e.kv as Record<string, unknown>;
            const prev = e.prevKv as Record<string, unknown> | undefined;
            const s = (x: unknown) => Buffer.from((x as Uint8Array | undefined) ?? []).toString();
            return `${(e.type as string | undefined) === 'DELETE' || e.type === 1 ? 'DELETE' : 'PUT'} ${s(kv.key)}=${s(kv.value)} mod ${kv.modRevision} ver ${kv.version ?? '0'}${prev ? ` prev ${s(prev.value)}` : ''}`;
          }),
        );
      await waitFor(
        () =>
          fromGrpc().length >= 20 && events(lines(text.slice(0, text.lastIndexOf('\n') + 1))).length >= 20,
        15_000,
        'twenty events on both watches',
      );
      const overHttp = events(lines(text.slice(0, text.lastIndexOf('\n') + 1)));
      expect(overHttp).toEqual(fromGrpc());
      expect(overHttp.filter((e) => e.startsWith('DELETE')).length).toBe(4);
    } finally {
      ac.abort();
      await pump;
      probe.close();
      grpcClient.close();
    }
  }, 60_000);

  it('keepalive answers each request object and ends with the request body', async () => {
    const ep = served.endpoints[0]!;
    const g = json(await curl(ep, '/v3/lease/grant', JSON.stringify({ TTL: 60 })));
    const id = g.ID as string;
    expect(id).toMatch(/^\d+$/);
    const k = await curl(ep, '/v3/lease/keepalive', `{"ID":"${id}"}\n{"ID":${id}}{"ID":"5"}`);
    expect(k.status).toBe(200);
    const ls = lines(k.body).map((l) => l.result as Record<string, unknown>);
    expect(ls.map((r) => [r.ID, r.TTL])).toEqual([
      [id, '60'],
      [id, '60'],
      ['5', undefined], // an unknown lease: TTL 0, left out as etcd leaves it out
    ]);
  });

  it('GET /health, GET /version; unknown routes 404, GET on a POST route 405', async () => {
    const ep = served.endpoints[1]!;
    const h = await curl(ep, '/health');
    expect([h.status, json(h)]).toEqual([200, { health: 'true' }]);
    const v = json(await curl(ep, '/version'));
    expect(v.etcdserver).toMatch(/^3\.4\.\d+$/);
    expect(v.etcdcluster).toBe('3.4.0');
    expect(v.conclave).toMatch(/^\d+\.\d+\.\d+/);
    expect((await curl(ep, '/v3/kv/nothing', '{}')).status).toBe(404);
    expect((await curl(ep, '/v3/kv/range')).status).toBe(405);
    // /v3beta is the same gateway.
    const beta = await curl(ep, '/v3beta/kv/range', JSON.stringify({ key: b64('x') }));
    expect(beta.status).toBe(200);
    // A Cluster method this member does not serve: Unimplemented, as etcd's gateway relays it.
    const add = await curl(ep, '/v3/cluster/member/promote', JSON.stringify({ ID: '1' }));
    if (add.status !== 200) expect(json(add).code).toBeTypeOf('number');
  });

  describe('bad input: 400 with a clear message, and the member keeps serving', () => {
    const cases: [string, string, string, RegExp][] = [
      ['invalid JSON', '/v3/kv/put', '{"key": "Zm9v", ', /not valid JSON/],
      ['a JSON array', '/v3/kv/range', '[1]', /expected a JSON object/],
      ['a number for bytes', '/v3/kv/range', '{"key": 1}', /RangeRequest\.key: expected a base64 string/],
      [
        'a string for a bool',
        '/v3/kv/range',
        '{"key": "Zm9v", "keys_only": "true"}',
        /keys_only: expected true or false/,
      ],
      [
        'a fraction for an int64',
        '/v3/kv/range',
        '{"key": "Zm9v", "revision": 1.5}',
        /revision: 1\.5 is not an integer/,
      ],
      [
        'letters for an int64',
        '/v3/kv/range',
        '{"key": "Zm9v", "limit": "ten"}',
        /limit: expected an integer/,
      ],
      [
        'an unknown enum name',
        '/v3/kv/range',
        '{"key": "Zm9v", "sort_order": "UPWARD"}',
        /sort_order: "UPWARD" is not one of NONE, ASCEND, DESCEND/,
      ],
      [
        'an exponent for an int64',
        '/v3/kv/range',
        '{"key": "Zm9v", "limit": 1e0}',
        /limit: 1e0 is not an integer/,
      ],
      [
        'a number in a string for an enum',
        '/v3/kv/range',
        '{"key": "Zm9v", "sort_order": "2"}',
        /sort_order: "2" is not one of/,
      ],
      [
        'a truncated body',
        '/v3/kv/put',
        '{"key": "Zm9v", "value": "eA==',
        /not valid JSON: .*unterminated string/,
      ],
      [
        'invalid base64',
        '/v3/kv/put',
        '{"key": "!!!", "value": "eA=="}',
        /PutRequest\.key: "!!!" is not valid standard base64/,
      ],
      ['an int64 out of range', '/v3/lease/grant', '{"TTL": "99999999999999999999"}', /out of range/],
    ];
    for (const [what, path, body, message] of cases)
      it(what, async () => {
        const ep = served.endpoints[0]!;
        const c = await curl(ep, path, body);
        expect(c.status).toBe(400);
        const j = json(c);
        expect(j.code).toBe(3);
        expect(j.error).toMatch(message);
        expect(j.message).toBe(j.error);
        // etcd's gateway refuses it too, with the same status and code (its text is Go's decoder's,
        // which names no field; ours names the field).
        if (etcd) {
          const theirs = await curl(etcd.endpoints[0]!, path, body);
          expect([theirs.status, json(theirs).code]).toEqual([400, 3]);
        }
      });

    it('a request over --max-request-bytes is refused as etcd refuses it (400); a body far over it 413', async () => {
      const ep = served.endpoints[0]!;
      const big = await curl(
        ep,
        '/v3/kv/put',
        JSON.stringify({ key: b64('big'), value: Buffer.alloc(5000).toString('base64') }),
      );
      expect([big.status, json(big)]).toEqual([
        400,
        { error: 'etcdserver: request is too large', message: 'etcdserver: request is too large', code: 3 },
      ]);
      const huge = await curl(
        ep,
        '/v3/kv/put',
        JSON.stringify({ key: b64('big'), value: Buffer.alloc(1024 * 1024).toString('base64') }),
      );
      expect(huge.status).toBe(413);
      expect(json(huge).error).toMatch(/over the gateway's limit/);
    });

    it('a bad object in a watch request stream ends that stream with a 400, and the member serves on', async () => {
      const ep = served.endpoints[0]!;
      const w = await curl(ep, '/v3/watch', '{"create_request": {"key": 5}}', 5);
      expect(w.status).toBe(400);
      expect(json(w).error).toMatch(/WatchRequest\.create_request\.key: expected a base64 string/);
      const ok = await curl(ep, '/v3/kv/put', JSON.stringify({ key: b64('after-bad'), value: b64('fine') }));
      expect(ok.status).toBe(200);
      const r = json(await curl(ep, '/v3/kv/range', JSON.stringify({ key: b64('after-bad') })));
      expect(unb64((r.kvs as Record<string, string>[])[0]!.value)).toBe('fine');
      expect(served.members.every((m) => m.proc?.exitCode === null)).toBe(true);
    });
  });
});

describe('the JSON gateway with auth enabled', () => {
  let one: ServedCluster | undefined;
  afterAll(async () => {
    await one?.close();
  });

  it('authenticate over HTTP, then the Authorization header carries the token', async () => {
    one = await startServed({ members: 1 });
    const ep = one.endpoints[0]!;
    const ok = async (path: string, body: object, token?: string) => {
      const headers: Record<string, string> = token ? { Authorization: token } : {};
      const r = await fetch(`http://${ep}${path}`, { method: 'POST', body: JSON.stringify(body), headers });
      return { status: r.status, body: (await r.json()) as Record<string, unknown> };
    };
    expect((await ok('/v3/auth/user/add', { name: 'root', password: 'pw' })).status).toBe(200);
    expect((await ok('/v3/auth/user/grant', { user: 'root', role: 'root' })).status).toBe(200);
    expect((await ok('/v3/auth/enable', {})).status).toBe(200);
    // No credentials: etcd's "user name is empty" (InvalidArgument, 400).
    const anon = await ok('/v3/kv/put', { key: b64('authed'), value: b64('v') });
    expect([anon.status, anon.body.error]).toEqual([400, 'etcdserver: user name is empty']);
    const auth = await ok('/v3/auth/authenticate', { name: 'root', password: 'pw' });
    expect(auth.status).toBe(200);
    const token = auth.body.token as string;
    expect(token).toBeTypeOf('string');
    expect((await ok('/v3/kv/put', { key: b64('authed'), value: b64('v') }, token)).status).toBe(200);
    const bad = await ok('/v3/kv/range', { key: b64('authed') }, `${token}x`);
    expect(bad.status).not.toBe(200);
    const r = await ok('/v3/kv/range', { key: b64('authed') }, token);
    expect(unb64((r.body.kvs as Record<string, string>[])[0]!.value)).toBe('v');
  }, 60_000);
});
