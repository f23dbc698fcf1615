/**
 * etcd 3.4's txn validation and branch choice, in the order etcd runs them, for the embedded store.
 *
 * etcd checks a txn in four steps before any op runs, and the first that fails decides the error:
 * 1. At the gRPC edge (v3rpc/key.go `Txn`): op counts (`checkTxnRequest`; here the member checks
 *    them where it proposes, backends/raft/limits.ts), then the duplicate-key check of each branch
 *    (`checkIntervals`) — `checkTxnRequest` here.
 * 2. At apply (apply.go `Txn`): `compareToPath` evaluates every compare of the tree, nested txns
 *    included, against the store as it was before the txn, and so fixes the branch each txn takes
 *    before any write — `choosePath` here.
 * 3. Every put on that path (nested ones at their place), in order: a put with an ignore flag needs
 *    its key in the store before the txn, then its lease must exist (`checkRequestPut`).
 * 4. Every read on that path: its revision must be neither in the future nor compacted
 *    (`checkRequestRange`). Steps 3 and 4 are `checkPath` here.
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';
import { resolveRange, toBytes } from '../../../src/keys.js';
import type { Compare, Op, Txn } from '../../../src/types.js';
import { keyString } from './mvcc.js';

/**
 * etcd's duplicate-key check (`checkIntervals`): no key written twice in a branch. The op-count
 * check that etcd runs first (`checkTxnRequest`) is the member's, at propose: backends/raft/limits.ts.
 */
export function checkTxnRequest(t: Txn): void {
  branchWrites(t.success ?? []);
  branchWrites(t.failure ?? []);
}

/** A deleted range `[start, end)` as latin1 key strings; an empty `end` is the single key `start`. */
type Interval = readonly [start: string, end: string];

/** The keys a branch puts and the ranges it deletes, nested txns (both branches) included. */
interface Writes {
  readonly puts: Set<string>;
  readonly dels: Interval[];
}

const duplicateKey = () =>
  new ConclaveError(
    ErrorCode.DuplicateKey,
    'etcdserver: duplicate key given in txn request (a key is put twice, or put and deleted, in one branch; split the writes into separate txns)',
  );

/**
 * Whether a delete interval covers `key`. The end is compared literally, as etcd's interval tree
 * does: a range end of "\0" (a fromKey delete, or a delete of every key) is below every key, so
 * such a delete covers nothing here even though it deletes keys when it runs.
 */
function covers([start, end]: Interval, key: string): boolean {
  return end === '' ? key === start : start <= key && key < end;
}

/**
 * etcd's `checkIntervals` for one branch. The order matters and is etcd's, op order aside:
 * first the branch's own deletes; then each nested txn in turn, whose puts (then-branch, then
 * else-branch; a key in both is fine, the two never both run) must not repeat a key already put
 * nor fall in a delete collected so far, after which its deletes join the collection; last the
 * branch's own puts, checked against every put and delete collected, nested ones included,
 * wherever they stand in the branch.
 */
function branchWrites(ops: readonly Op[]): Writes {
  const dels: Interval[] = [];
  for (const op of ops) {
    if (op.type !== 'delete') continue;
    const r = resolveRange(op.key, op.options);
    dels.push([keyString(r.key), keyString(r.end)]);
  }
  const covered = (key: string) => dels.some((d) => covers(d, key));
  const puts = new Set<string>();
  for (const op of ops) {
    if (op.type !== 'txn') continue;
    const then = branchWrites(op.txn.success ?? []);
    const otherwise = branchWrites(op.txn.failure ?? []);
    for (const k of then.puts) {
      if (puts.has(k) || covered(k)) throw duplicateKey();
      puts.add(k);
    }
    for (const k of otherwise.puts) {
      if ((puts.has(k) && !then.puts.has(k)) || covered(k)) throw duplicateKey();
      puts.add(k);
    }
    dels.push(...then.dels, ...otherwise.dels);
  }
  for (const op of ops) {
    if (op.type !== 'put') continue;
    const k = keyString(toBytes(op.key));
    if (puts.has(k) || covered(k)) throw duplicateKey();
    puts.add(k);
  }
  return { puts, dels };
}

/** Whether each txn of a tree (the top one and every nested one on the path) takes its success branch. */
export type TxnPath = ReadonlyMap<Txn, boolean>;

/**
 * etcd's `compareToPath`: evaluates the compares of `t` and of every nested txn in the branch it
 * takes, recursively, all with `compare` on the store before the txn. A nested txn's compares
 * therefore never see the writes of ops before it: the whole path is fixed before any op runs.
 */
export function choosePath(t: Txn, compare: (c: Compare) => boolean): TxnPath {
  const path = new Map<Txn, boolean>();
  const walk = (txn: Txn): void => {
    const succeeded = (txn.compare ?? []).every(compare);
    path.set(txn, succeeded);
    for (const op of branch(txn, succeeded)) if (op.type === 'txn') walk(op.txn);
  };
  walk(t);
  return path;
}

/** The ops the txn runs, given whether its compares held. */
export function branch(t: Txn, succeeded: boolean): readonly Op[] {
  return (succeeded ? t.success : t.failure) ?? [];
}

/** What `checkPath` needs to know of the store before the txn. */
export interface PathChecks {
  /** Whether `key` exists (for a put with `ignoreValue` or `ignoreLease`). */
  keyExists(key: Uint8Array): boolean;
  /** Throws `lease-not-found` unless the lease exists. */
  requireLease(id: bigint): void;
  /** Throws `future-revision` or `compacted` unless a read at `revision` can be served. */
  checkRevision(revision: number): void;
}

/**
 * etcd's `checkRequests` over the chosen path, run before any op: first every put (ignore flags
 * need the key; then the lease must exist), then every read's revision. So a txn with a bad read
 * and a bad put fails on the put, wherever the two stand.
 */
export function checkPath(t: Txn, path: TxnPath, checks: PathChecks): void {
  const each = (txn: Txn, f: (op: Op) => void): void => {
    for (const op of branch(txn, path.get(txn) ?? false)) {
      if (op.type === 'txn') each(op.txn, f);
      else f(op);
    }
  };
  each(t, (op) => {
    if (op.type !== 'put') return;
    const o = op.options ?? {};
    if ((o.ignoreValue || o.ignoreLease) && !checks.keyExists(toBytes(op.key))) {
      throw new ConclaveError(ErrorCode.InvalidArgument, 'etcdserver: key not found');
    }
    if (o.lease !== undefined && o.lease !== 0n) checks.requireLease(o.lease);
  });
  each(t, (op) => {
    if (op.type === 'get' && op.options?.revision) checks.checkRevision(op.options.revision);
  });
}
