/**
 * The permission matrix, differential: the same users, roles and permissions (read, write and
 * readwrite on a key, a prefix, a range and a from-key range) set up on real etcd 3.4 and on a
 * `conclave serve` member, then the same calls by each user (and by an anonymous caller and one
 * with a bogus token) on both — every KV call (with prev_kv), Txn compares and both branches,
 * Watch creation on permitted, unpermitted and partly permitted ranges, the Lease calls (with keys
 * attached to a lease the caller may or may not write), the Auth service's read calls, the
 * Maintenance calls and the Lock/Election services — each answer reduced to its outcome (what was
 * returned, or the gRPC code and text). Both must give the same outcomes, call for call, except
 * the differences listed in `deliberate` (where etcd 3.4.23 lets a caller past a permission it
 * lacks; the served member refuses), each asserted on both sides. It runs on one member, then on
 * three with every call made through a follower.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type EtcdCluster, etcdBinary, startEtcd } from '../harness/etcd.js';
import { type ServedCluster, startServed } from '../harness/served.js';
import { type Outcome, runMatrix, Target } from './auth-matrix-kit.js';

const available = !!etcdBinary() || process.env.REQUIRE_ETCD === '1';

/**
 * Where the served member is deliberately stricter than etcd 3.4.23, which lets these through:
 * etcd checks no permission on ops inside a nested txn (`checkTxnReqsPermission` has no case for
 * RequestTxn), none for read on a txn put's prev_kv, and checks a watch from a key on
 * (range_end "\0") as the single key (the watch server turns "\0" into an empty range end, which
 * the permission check reads as one key). Key: `caller / step`; values: [etcd, served].
 */
const deliberate = new Map<string, [Outcome, Outcome]>();
const denied = 'PERMISSION_DENIED: etcdserver: permission denied';
const watchDenied =
  'watch canceled (id -1): rpc error: code = PermissionDenied desc = etcdserver: permission denied';
for (const c of ['reader', 'writer', 'rw', 'none'])
  deliberate.set(`${c} / txn nested put k2`, ['ok succeeded', denied]);
deliberate.set('anon / txn nested put k2', [
  'ok succeeded',
  'INVALID_ARGUMENT: etcdserver: user name is empty',
]);
deliberate.set('writer / txn put prev_kv', ['ok succeeded', denied]);
for (const c of ['reader', 'rw'])
  deliberate.set(`${c} / watch from k1 (only the key permitted)`, ['watch created', watchDenied]);
// AuthStatus is etcd 3.5's (3.4.23 does not serve it); served as 3.5 serves it, to any caller.
const noAuthStatus = 'UNIMPLEMENTED: unknown method AuthStatus for service etcdserverpb.Auth';
for (const c of ['reader', 'writer', 'rw', 'none', 'anon', 'root'])
  deliberate.set(`${c} / auth status`, [noAuthStatus, 'ok enabled true']);
deliberate.set('bogus / auth status', [noAuthStatus, 'UNAUTHENTICATED: etcdserver: invalid auth token']);

/** etcd's and the served outcomes compared (deliberate differences asserted on both sides). */
function differences(etcd: Map<string, Outcome>, served: Map<string, Outcome>): string {
  const rows: string[] = [];
  for (const [k, ev] of etcd) {
    const sv = served.get(k);
    const d = deliberate.get(k);
    if (d) {
      expect([k, ev, sv]).toEqual([k, ...d]);
      continue;
    }
    if (sv !== ev) rows.push(`${k}\n    etcd:   ${ev}\n    served: ${sv}`);
  }
  return rows.join('\n');
}

// On one member; then on three, every call made through a follower: writes and auth changes
// forwarded to the leader, reads confirmed with it, the auth store applied on every member.
for (const members of [1, 3] as const) {
  describe.skipIf(!available)(
    `served — the permission matrix, differential against etcd 3.4 (${members} member${members > 1 ? 's, through a follower' : ''})`,
    () => {
      let etcd: EtcdCluster | undefined;
      let served: ServedCluster;
      let endpoint: string;

      beforeAll(async () => {
        [etcd, served] = await Promise.all([
          startEtcd({ extraArgs: ['--bcrypt-cost', '4'] }),
          startServed({ members }),
        ]);
        const leader = await served.waitLeader(60_000);
        endpoint = served.endpoints[members === 1 ? 0 : (leader + 1) % members]!;
      }, 120_000);
      afterAll(async () => {
        await Promise.all([etcd?.stop(), served?.close()]);
      });

      it(`auth matrix — the same calls by the same users get the same answers from etcd and conclave serve (${members} member${members > 1 ? 's' : ''})`, async () => {
        const e = new Target(etcd!.endpoints[0]!);
        const s = new Target(endpoint);
        let got: [Map<string, Outcome>, Map<string, Outcome>];
        try {
          got = await Promise.all([runMatrix(e), runMatrix(s)]);
        } finally {
          e.close();
          s.close();
        }
        if (process.env.AUTH_MATRIX_PRINT === '1') for (const [k, ev] of got[0]) console.log(`${k}: ${ev}`);
        expect(differences(...got)).toBe('');
        if (members > 1 && served.endpoints[served.leaderIndex() ?? -1] === endpoint)
          // A leader change on a loaded machine made the member called the leader during the run:
          // the answers were still compared, but not all of them went through a follower.
          console.warn('auth matrix: the member called became leader during the run');
        // The matrix is not vacuous: each kind of answer occurs.
        const all = [...got[0].values()].join('\n');
        expect(all).toMatch(/permission denied/);
        expect(all).toMatch(/user name is empty/);
        expect(all).toMatch(/invalid auth token/);
        expect(all).toMatch(/^ok \[k1\]/m);
      }, 300_000);
    },
  );
}
