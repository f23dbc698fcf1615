/**
 * The permission matrix's parts (test/served/auth-matrix.test.ts, auth-stale.test.ts): raw gRPC
 * calls to one target (real etcd or a `conclave serve` member) with an explicit token, the same
 * users, roles and permissions set up on each, and the list of calls each caller makes, every
 * answer reduced to its outcome (what was returned, or the gRPC code and text).
 */
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { root as pbRoot } from '../../src/protocol/codec.js';

const t = (n: string): protobuf.Type => pbRoot.lookupType(`etcdserverpb.${n}`);
const B = (s: string) => Buffer.from(s, 'latin1');
const callTimeoutMs = 20_000;

/** The outcome of one call: `ok …` with what it returned, or `<code name>: <text>`. */
export type Outcome = string;

const codeName = (c: number) => grpc.status[c] ?? String(c);
export const failed = (e: unknown): Outcome => {
  const g = e as { code?: number; details?: string };
  return typeof g.code === 'number' ? `${codeName(g.code)}: ${g.details}` : `error: ${String(e)}`;
};
/** Keys as text; a recipe key's lease id (hex, differs between the targets) as `<lease>`. */
const keys = (kvs: Array<{ key: Uint8Array }> | undefined) =>
  (kvs ?? [])
    .map((k) =>
      Buffer.from(k.key)
        .toString('latin1')
        .replace(/\/[0-9a-f]{6,16}$/, '/<lease>'),
    )
    .join(',');

/** One target (etcd or conclave serve): raw gRPC calls with an explicit token. */
export class Target {
  readonly client: grpc.Client;
  constructor(readonly endpoint: string) {
    this.client = new grpc.Client(endpoint, grpc.credentials.createInsecure());
  }
  md(token?: string): grpc.Metadata {
    const md = new grpc.Metadata();
    if (token !== undefined) md.set('token', token);
    return md;
  }
  unary<R>(path: string, req: string, res: string, body: object, token?: string): Promise<R> {
    const Q = t(req);
    const S = t(res);
    return new Promise((resolve, reject) =>
      this.client.makeUnaryRequest(
        path,
        (m: object) => Buffer.from(Q.encode(m as Record<string, unknown>).finish()),
        (b: Buffer) => S.toObject(S.decode(b), { longs: String, defaults: false }) as R,
        body,
        this.md(token),
        { deadline: Date.now() + callTimeoutMs },
        (err, r) => (err ? reject(err) : resolve(r as R)),
      ),
    );
  }
  kv<R>(m: 'Range' | 'Put' | 'DeleteRange' | 'Txn', body: object, token?: string): Promise<R> {
    const n = m === 'DeleteRange' ? 'DeleteRange' : m;
    return this.unary(`/etcdserverpb.KV/${m}`, `${n}Request`, `${n}Response`, body, token);
  }
  auth<R>(m: string, body: object, token?: string): Promise<R> {
    const base = m.startsWith('Auth') ? m : `Auth${m}`;
    return this.unary(`/etcdserverpb.Auth/${m}`, `${base}Request`, `${base}Response`, body, token);
  }
  lease<R>(m: string, body: object, token?: string): Promise<R> {
    return this.unary(`/etcdserverpb.Lease/${m}`, `${m}Request`, `${m}Response`, body, token);
  }
  /** The first answer of a Watch stream to one create request (then the stream is cancelled). */
  watchCreate(create: object, token?: string): Promise<Outcome> {
    const Q = t('WatchRequest');
    const S = t('WatchResponse');
    return new Promise((resolve) => {
      const s = this.client.makeBidiStreamRequest(
        '/etcdserverpb.Watch/Watch',
        (m: object) => Buffer.from(Q.encode(m as Record<string, unknown>).finish()),
        (b: Buffer) => S.toObject(S.decode(b), { longs: String, defaults: true }),
        this.md(token),
        { deadline: Date.now() + callTimeoutMs },
      );
      let done = false;
      const end = (o: Outcome) => {
        if (done) return;
        done = true;
        resolve(o);
        s.cancel();
      };
      s.on('data', (r: { created: boolean; canceled: boolean; cancelReason: string; watchId: string }) =>
        end(
          r.canceled
            ? `watch canceled (id ${r.watchId}): ${r.cancelReason}`
            : `watch ${r.created ? 'created' : 'answered'}`,
        ),
      );
      s.on('error', (e) => end(failed(e)));
      s.on('end', () => end('watch ended'));
      s.write({ createRequest: create });
    });
  }
  /** One keep-alive of `id` on a fresh LeaseKeepAlive stream. */
  keepAliveOnce(id: string, token?: string): Promise<Outcome> {
    const Q = t('LeaseKeepAliveRequest');
    const S = t('LeaseKeepAliveResponse');
    return new Promise((resolve) => {
      const s = this.client.makeBidiStreamRequest(
        '/etcdserverpb.Lease/LeaseKeepAlive',
        (m: object) => Buffer.from(Q.encode(m as Record<string, unknown>).finish()),
        (b: Buffer) => S.toObject(S.decode(b), { longs: Number, defaults: true }),
        this.md(token),
        { deadline: Date.now() + callTimeoutMs },
      );
      let done = false;
      const end = (o: Outcome) => {
        if (done) return;
        done = true;
        resolve(o);
        s.cancel();
      };
      s.on('data', (r: { TTL: number }) => end(r.TTL > 0 ? 'ok kept alive' : `ok TTL ${r.TTL}`));
      s.on('error', (e) => end(failed(e)));
      s.on('end', () => end('keep-alive ended'));
      s.write({ ID: id });
    });
  }
  close(): void {
    this.client.close();
  }
}

export const rootPw = 'root-pw-matrix';
export const pw = (u: string) => `${u}-pw-matrix`;
/** Each role grants its kind on the same four ranges: a key, a prefix, a range and from a key on. */
const kinds = { ro: 0, wo: 1, rw: 2 } as const;
export const grants: Array<[string, string]> = [
  ['k1', ''],
  ['p/', 'p0'],
  ['r/a', 'r/m'],
  ['z/', '\0'],
];
/** The callers: a user per role, a user without roles, root, nobody, and a bogus token. */
const users = { reader: 'ro', writer: 'wo', rw: 'rw', none: undefined } as const;
export const callers = ['reader', 'writer', 'rw', 'none', 'anon', 'bogus', 'root'] as const;
export type Caller = (typeof callers)[number];

/** Same setup on both targets, through the same calls; returns a token per caller. */
export async function setUp(x: Target): Promise<Record<Caller, string | undefined>> {
  await x.auth('RoleAdd', { name: 'root' });
  await x.auth('UserAdd', { name: 'root', password: rootPw });
  await x.auth('UserGrantRole', { user: 'root', role: 'root' });
  for (const [role, type] of Object.entries(kinds)) {
    await x.auth('RoleAdd', { name: role });
    for (const [key, end] of grants)
      await x.auth('RoleGrantPermission', {
        name: role,
        perm: { permType: type, key: B(key), ...(end ? { rangeEnd: B(end) } : {}) },
      });
  }
  for (const [u, role] of Object.entries(users)) {
    await x.auth('UserAdd', { name: u, password: pw(u) });
    if (role) await x.auth('UserGrantRole', { user: u, role });
  }
  for (const k of ['k1', 'k2', 'p/a', 'r/c', 'z/x', 'y/x']) await x.kv('Put', { key: B(k), value: B('v') });
  await x.auth('AuthEnable', {});
  const token = async (name: string, password: string) =>
    (await x.auth<{ token: string }>('Authenticate', { name, password })).token;
  return {
    reader: await token('reader', pw('reader')),
    writer: await token('writer', pw('writer')),
    rw: await token('rw', pw('rw')),
    none: await token('none', pw('none')),
    anon: undefined,
    bogus: 'not-a-token.7',
    root: await token('root', rootPw),
  };
}

type Step = readonly [
  name: string,
  run: (x: Target, tok: string | undefined, rootTok: string) => Promise<Outcome>,
];

const range =
  (key: string, end?: string, extra: object = {}): Step[1] =>
  async (x, tok) => {
    const r = await x.kv<{ kvs?: Array<{ key: Uint8Array }>; count?: string }>(
      'Range',
      { key: B(key), ...(end !== undefined ? { rangeEnd: B(end) } : {}), ...extra },
      tok,
    );
    return `ok [${keys(r.kvs)}]`;
  };
const put =
  (key: string, extra: object = {}): Step[1] =>
  async (x, tok) => {
    const r = await x.kv<{ prevKv?: { key: Uint8Array } }>(
      'Put',
      { key: B(key), value: B('v'), ...extra },
      tok,
    );
    return `ok${r.prevKv ? ' prev' : ''}`;
  };
const del =
  (key: string, end?: string, extra: object = {}): Step[1] =>
  async (x, tok) => {
    const r = await x.kv<{ deleted?: string; prevKvs?: Array<{ key: Uint8Array }> }>(
      'DeleteRange',
      { key: B(key), ...(end !== undefined ? { rangeEnd: B(end) } : {}), ...extra },
      tok,
    );
    return `ok deleted ${r.deleted ?? 0} prev [${keys(r.prevKvs)}]`;
  };
const txn =
  (body: object): Step[1] =>
  async (x, tok) => {
    const r = await x.kv<{ succeeded?: boolean }>('Txn', body, tok);
    return `ok ${r.succeeded ? 'succeeded' : 'failed'}`;
  };
const cmpValue = (key: string, end?: string) => ({
  key: B(key),
  ...(end ? { rangeEnd: B(end) } : {}),
  target: 3, // VALUE
  result: 0, // EQUAL
  value: B('v'),
});
const opPut = (key: string, extra: object = {}) => ({ requestPut: { key: B(key), value: B('v'), ...extra } });
const watch =
  (key: string, end?: string): Step[1] =>
  (x, tok) =>
    x.watchCreate({ key: B(key), ...(end !== undefined ? { rangeEnd: B(end) } : {}) }, tok);
const ok = (r: unknown) => (r ? 'ok' : 'ok (empty)');

/** Leases root makes for a caller: A has a key the caller may write (if any), B one outside. */
async function rootLeases(x: Target, rootTok: string, who: string): Promise<{ a: string; b: string }> {
  const a = (await x.lease<{ ID: string }>('LeaseGrant', { TTL: 600 }, rootTok)).ID;
  const b = (await x.lease<{ ID: string }>('LeaseGrant', { TTL: 600 }, rootTok)).ID;
  await x.kv('Put', { key: B(`p/${who}/la`), value: B('v'), lease: a }, rootTok);
  await x.kv('Put', { key: B(`k2/${who}/lb`), value: B('v'), lease: b }, rootTok);
  return { a, b };
}

/** The calls every caller makes, in this order (`u` is the caller's name, for keys of its own). */
export function steps(u: string): Step[] {
  let leases: { a: string; b: string } | undefined;
  return [
    ['range key k1', range('k1')],
    ['range key k2 (unpermitted)', range('k2')],
    ['range prefix p/', range('p/', 'p0')],
    ['range prefix p (wider)', range('p', 'q')],
    ['range [r/a, r/m)', range('r/a', 'r/m')],
    ['range [r/a, r/z) (beyond)', range('r/a', 'r/z')],
    ['range [r/b, r/d) (inside)', range('r/b', 'r/d')],
    ['range key r/c (in the range)', range('r/c')],
    ['range from z/', range('z/', '\0')],
    ['range from y (wider)', range('y', '\0')],
    ['range key z/x (in from-key)', range('z/x')],
    ['range k1 serializable', range('k1', undefined, { serializable: true })],
    ['range everything', range('\0', '\0')],
    ['range k1 count only', range('k1', undefined, { countOnly: true })],
    ['put k1', put('k1')],
    ['put k1 prev_kv', put('k1', { prevKv: true })],
    [`put p/${u}`, put(`p/${u}`)],
    ['put k2 (unpermitted)', put('k2')],
    ['put r/c', put('r/c')],
    ['put zz (from-key)', put('zz')],
    [`delete p/${u}`, del(`p/${u}`)],
    [`delete p/${u}/ prefix prev_kv`, del(`p/${u}/`, `p/${u}0`, { prevKv: true })],
    ['delete k2 (unpermitted)', del('k2')],
    ['delete [r/a, r/z) (beyond)', del('r/a', 'r/z')],
    ['delete k1 prev_kv', del('k1', undefined, { prevKv: true })],
    ['txn compare k1, put p/', txn({ compare: [cmpValue('k1')], success: [opPut(`p/${u}/t`)] })],
    ['txn compare k2 (unpermitted)', txn({ compare: [cmpValue('k2')], success: [opPut(`p/${u}/t`)] })],
    [
      'txn failure branch touches k2',
      txn({ compare: [cmpValue('p/a')], success: [opPut(`p/${u}/t`)], failure: [opPut('k2')] }),
    ],
    ['txn compare on prefix p/', txn({ compare: [cmpValue('p/', 'p0')], success: [] })],
    ['txn compare on prefix p (wider)', txn({ compare: [cmpValue('p', 'q')], success: [] })],
    ['txn put prev_kv', txn({ success: [opPut(`p/${u}/t`, { prevKv: true })] })],
    ['txn delete prev_kv', txn({ success: [{ requestDeleteRange: { key: B(`p/${u}/t`), prevKv: true } }] })],
    // Where the txn put above was refused by the served member only (write-only caller), the
    // key it wrote on etcd is removed, so the states stay the same (outcome: allowed or not).
    [
      `delete p/${u}/t (tidy)`,
      async (x, tok) => {
        await x.kv('DeleteRange', { key: B(`p/${u}/t`) }, tok);
        return 'ok';
      },
    ],
    ['txn range k2 (read-only txn)', txn({ success: [{ requestRange: { key: B('k2') } }] })],
    ['txn range k1 (read-only txn)', txn({ success: [{ requestRange: { key: B('k1') } }] })],
    ['txn nested put k2', txn({ success: [{ requestTxn: { success: [opPut('k2')] } }] })],
    ['watch k1', watch('k1')],
    ['watch k2 (unpermitted)', watch('k2')],
    ['watch prefix p/', watch('p/', 'p0')],
    ['watch [p/, q) (partly permitted)', watch('p/', 'q')],
    ['watch from z/', watch('z/', '\0')],
    ['watch from k1 (only the key permitted)', watch('k1', '\0')],
    ['watch everything', watch('', '\0')],
    [
      'lease grant',
      async (x, tok, rootTok) => {
        leases = await rootLeases(x, rootTok, u);
        return ok(await x.lease('LeaseGrant', { TTL: 60 }, tok));
      },
    ],
    ['lease keep-alive', (x, tok) => x.keepAliveOnce(leases?.a ?? '0', tok)],
    [
      'lease time-to-live with keys',
      async (x, tok) => {
        const r = await x.lease<{ TTL: string; keys?: Uint8Array[] }>(
          'LeaseTimeToLive',
          { ID: leases?.b ?? '0', keys: true },
          tok,
        );
        return `ok keys [${keys((r.keys ?? []).map((key) => ({ key })))}]`;
      },
    ],
    ['lease leases', async (x, tok) => ok(await x.lease('LeaseLeases', {}, tok))],
    [
      `put p/${u}/l with a lease holding k2/… (unpermitted)`,
      put(`p/${u}/l`, {
        get lease() {
          return leases?.b ?? '0';
        },
      }),
    ],
    [
      'lease revoke (holds k2/…)',
      async (x, tok) => ok(await x.lease('LeaseRevoke', { ID: leases?.b ?? '0' }, tok)),
    ],
    [
      'lease revoke (holds p/…)',
      async (x, tok) => ok(await x.lease('LeaseRevoke', { ID: leases?.a ?? '0' }, tok)),
    ],
    [
      'auth status',
      async (x, tok) => `ok enabled ${(await x.auth<{ enabled?: boolean }>('AuthStatus', {}, tok)).enabled}`,
    ],
    [
      'user get (self)',
      async (x, tok) => `ok [${(await x.auth<{ roles?: string[] }>('UserGet', { name: u }, tok)).roles}]`,
    ],
    [
      'user get root',
      async (x, tok) =>
        `ok [${(await x.auth<{ roles?: string[] }>('UserGet', { name: 'root' }, tok)).roles}]`,
    ],
    [
      'role get ro',
      async (x, tok) =>
        `ok ${(await x.auth<{ perm?: unknown[] }>('RoleGet', { role: 'ro' }, tok)).perm?.length}`,
    ],
    [
      'user list',
      async (x, tok) => `ok [${(await x.auth<{ users?: string[] }>('UserList', {}, tok)).users}]`,
    ],
    [
      'role list',
      async (x, tok) => `ok [${(await x.auth<{ roles?: string[] }>('RoleList', {}, tok)).roles}]`,
    ],
    [
      'status',
      async (x, tok) =>
        ok(await x.unary('/etcdserverpb.Maintenance/Status', 'StatusRequest', 'StatusResponse', {}, tok)),
    ],
    [
      'alarm list',
      async (x, tok) =>
        ok(await x.unary('/etcdserverpb.Maintenance/Alarm', 'AlarmRequest', 'AlarmResponse', {}, tok)),
    ],
    [
      'hash',
      async (x, tok) =>
        ok(await x.unary('/etcdserverpb.Maintenance/Hash', 'HashRequest', 'HashResponse', {}, tok)),
    ],
    [
      'hashkv',
      async (x, tok) =>
        ok(await x.unary('/etcdserverpb.Maintenance/HashKV', 'HashKVRequest', 'HashKVResponse', {}, tok)),
    ],
    [
      'defragment',
      async (x, tok) =>
        ok(
          await x.unary(
            '/etcdserverpb.Maintenance/Defragment',
            'DefragmentRequest',
            'DefragmentResponse',
            {},
            tok,
          ),
        ),
    ],
    [
      `lock p/${u}/lock, unlock`,
      async (x, tok) => {
        const r = await x.unary<{ key?: Uint8Array }>(
          '/v3lockpb.Lock/Lock',
          'LockRequest',
          'LockResponse',
          { name: B(`p/${u}/lock`) },
          tok,
        );
        await x.unary('/v3lockpb.Lock/Unlock', 'UnlockRequest', 'UnlockResponse', { key: r.key }, tok);
        return 'ok locked, unlocked';
      },
    ],
    [
      'lock k2 (unpermitted)',
      async (x, tok) =>
        ok(await x.unary('/v3lockpb.Lock/Lock', 'LockRequest', 'LockResponse', { name: B('k2/lock') }, tok)),
    ],
    [
      `campaign p/${u}/el, leader`,
      async (x, tok) => {
        await x.unary(
          '/v3electionpb.Election/Campaign',
          'CampaignRequest',
          'CampaignResponse',
          { name: B(`p/${u}/el`), value: B('me') },
          tok,
        );
        const l = await x.unary<{ kv?: { value?: Uint8Array } }>(
          '/v3electionpb.Election/Leader',
          'LeaderRequest',
          'LeaderResponse',
          { name: B(`p/${u}/el`) },
          tok,
        );
        return `ok leader ${Buffer.from(l.kv?.value ?? []).toString()}`;
      },
    ],
    [
      'leader of k2/el (unpermitted)',
      async (x, tok) =>
        ok(
          await x.unary(
            '/v3electionpb.Election/Leader',
            'LeaderRequest',
            'LeaderResponse',
            { name: B('k2/el') },
            tok,
          ),
        ),
    ],
  ];
}

/** Every caller's steps on one target: `caller / step → outcome`. */
export async function runMatrix(x: Target): Promise<Map<string, Outcome>> {
  const toks = await setUp(x);
  const out = new Map<string, Outcome>();
  for (const c of callers) {
    for (const [name, run] of steps(c)) {
      out.set(`${c} / ${name}`, await run(x, toks[c], toks.root!).catch(failed));
    }
  }
  return out;
}
