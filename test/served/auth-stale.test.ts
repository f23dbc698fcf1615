/**
 * Tokens left over from before an auth change, differential against etcd 3.4.23: the same users
 * and roles set up on real etcd and on a `conclave serve` member (simple tokens, then JWT tokens
 * with `--auth-token jwt,…` on both), then each caller's calls of the permission matrix
 * (auth-matrix-kit.ts) made with a token issued before
 * - an unrelated auth change (a role added): simple tokens stay valid; a JWT carries the auth
 *   revision it was issued at, so etcd refuses it on every permission-checked call with "revision
 *   of auth store is old" (auth/store.go isOpPermitted), while admin calls, which check no
 *   revision (IsAdminPermitted), still pass;
 * - the caller's password change and the caller's deletion: etcd drops the user's simple tokens
 *   ("invalid auth token"); a JWT is refused as old;
 * - a role revoked from the caller: the token stays valid, the permissions are the new ones;
 * - auth disabled: every simple token was dropped, so one sent anyway is "invalid auth token" on
 *   each call that reads the caller (etcd ignores none); a JWT still verifies, and only a
 *   serialized read notices that its revision is not the store's.
 * Both targets must give the same outcome for every call.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { failed, type Outcome, pw, rootPw, setUp, steps, Target } from './auth-matrix-kit.js';

const available = !!etcdBinary() || process.env.REQUIRE_ETCD === '1';

/** Every scenario's calls on one target: `scenario / step → outcome`. */
async function runStale(x: Target): Promise<Map<string, Outcome>> {
  const toks = await setUp(x);
  const out = new Map<string, Outcome>();
  const token = async (name: string, password: string) =>
    (await x.auth<{ token: string }>('Authenticate', { name, password })).token;
  const run = async (label: string, who: string, tok: string | undefined, rootTok: string | undefined) => {
    for (const [name, step] of steps(who))
      out.set(`${label} / ${name}`, await step(x, tok, rootTok!).catch(failed));
  };

  // An unrelated change: a role added by root.
  await x.auth('RoleAdd', { name: 'unrelated' }, toks.root);
  let root = await token('root', rootPw);
  await run('rw, token from before a role was added', 'rw', toks.rw, root);
  await run('root, token from before a role was added', 'root', toks.root, root);

  // Its own password changed.
  const rwTok = await token('rw', pw('rw'));
  await x.auth('UserChangePassword', { name: 'rw', password: 'rw-new-pw' }, root);
  root = await token('root', rootPw);
  await run('rw, token from before its password changed', 'rw', rwTok, root);

  // A role revoked from it.
  const readerTok = await token('reader', pw('reader'));
  await x.auth('UserRevokeRole', { name: 'reader', role: 'ro' }, root);
  root = await token('root', rootPw);
  await run('reader, token from before its role was revoked', 'reader', readerTok, root);

  // Deleted.
  const writerTok = await token('writer', pw('writer'));
  await x.auth('UserDelete', { name: 'writer' }, root);
  root = await token('root', rootPw);
  await run('writer, token from before it was deleted', 'writer', writerTok, root);

  // Auth disabled.
  const rwLast = await token('rw', 'rw-new-pw');
  await x.auth('AuthDisable', {}, root);
  await run('rw, token from before auth was disabled', 'rw', rwLast, undefined);
  await run('root, token from before auth was disabled', 'root', root, undefined);
  out.set('authenticate after auth was disabled', await token('root', rootPw).then(() => 'ok', failed));
  out.set(
    'auth enable with a token from before auth was disabled',
    await x.auth('AuthEnable', {}, root).then(() => 'ok', failed),
  );
  return out;
}

/** Where the served member answers differently on purpose (as in auth-matrix.test.ts). */
function deliberate(k: string, etcd: Outcome): Outcome | undefined {
  // etcd 3.4.23 checks no permission on ops inside a nested txn, nor read on a txn put's prev_kv;
  // the served member does.
  if (/ \/ txn nested put k2$/.test(k) && etcd === 'ok succeeded') return 'served refuses';
  if (/ \/ txn put prev_kv$/.test(k) && etcd === 'ok succeeded') return 'served refuses';
  if (/ \/ watch from k1 \(only the key permitted\)$/.test(k) && etcd === 'watch created')
    return 'served refuses';
  // AuthStatus is etcd 3.5's; 3.4.23 does not serve it.
  if (/ \/ auth status$/.test(k) && /^UNIMPLEMENTED: /.test(etcd)) return 'served answers';
  return undefined;
}

function compare(etcd: Map<string, Outcome>, served: Map<string, Outcome>): string {
  const rows: string[] = [];
  for (const [k, ev] of etcd) {
    const sv = served.get(k);
    const d = deliberate(k, ev);
    if (d === 'served refuses' && sv !== ev && /^(PERMISSION_DENIED|INVALID_ARGUMENT): /.test(sv ?? ''))
      continue;
    if (d === 'served refuses' && sv !== ev && /canceled/.test(sv ?? '')) continue;
    if (d === 'served answers' && sv !== ev) continue;
    if (sv !== ev) rows.push(`${k}\n    etcd:   ${ev}\n    served: ${sv}`);
  }
  return rows.join('\n');
}

const keyDir = mkdtempSync(join(tmpdir(), 'conclave-auth-stale-'));
function jwtSpec(): string {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const priv = join(keyDir, 'jwt.key');
  const pub = join(keyDir, 'jwt.pub');
  writeFileSync(priv, rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
  writeFileSync(pub, rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string);
  return `jwt,pub-key=${pub},priv-key=${priv},sign-method=RS256,ttl=10m`;
}

describe.skipIf(!available)(
  'served — tokens from before an auth change, differential against etcd 3.4',
  () => {
    afterAll(() => rmSync(keyDir, { recursive: true, force: true }));

    const kinds = (process.env.AUTH_STALE_KIND ?? 'simple,jwt').split(',') as Array<'simple' | 'jwt'>;
    for (const kind of kinds) {
      describe(`${kind} tokens`, () => {
        let etcd: EtcdCluster | undefined;
        let served: ServedCluster;
        beforeAll(async () => {
          const tokenArgs = kind === 'jwt' ? ['--auth-token', jwtSpec()] : [];
          [etcd, served] = await Promise.all([
            startEtcd({ extraArgs: ['--bcrypt-cost', '4', ...tokenArgs] }),
            startServed({ members: 1, extraArgs: tokenArgs }),
          ]);
        }, 120_000);
        afterAll(async () => {
          await Promise.all([etcd?.stop(), served?.close()]);
        });

        it(`stale ${kind} tokens — every call answered as etcd answers it`, async () => {
          const e = new Target(etcd!.endpoints[0]!);
          const s = new Target(served.endpoints[0]!);
          let got: [Map<string, Outcome>, Map<string, Outcome>];
          try {
            got = await Promise.all([runStale(e), runStale(s)]);
          } finally {
            e.close();
            s.close();
          }
          if (process.env.AUTH_STALE_PRINT === '1')
            for (const [k, ev] of got[0])
              console.log(`${k}\n    etcd:   ${ev}\n    served: ${got[1].get(k)}`);
          expect(compare(...got)).toBe('');
          const all = [...got[0].values()].join('\n');
          // Not vacuous: the scenarios reach the refusals they are about.
          expect(all).toMatch(kind === 'jwt' ? /revision of auth store is old/ : /invalid auth token/);
          expect(all).toMatch(/^ok/m);
          if (kind === 'simple') expect(all).toMatch(/permission denied/);
        }, 300_000);
      });
    }
  },
);
