/**
 * etcd's server-side Lock service (etcd 3.4 `etcdserver/api/v3lock`), served at
 * /v3lockpb.Lock/Lock and /v3lockpb.Lock/Unlock with Conclave's own `Mutex` running in this
 * member against its store.
 *
 * - Lock {name, lease}: waits until the lock `name` is held under `lease` and answers the held
 *   key (`name/<lease in hex>`), which lives as long as the lease. The layout is the one etcd's
 *   Go Mutex, `etcdctl lock` and Conclave's Mutex share, so a lock taken here excludes both.
 *   Lease 0 takes a new 60 s lease, as etcd does. An unknown lease: "requested lease not found".
 *   A call the client cancels leaves no key behind.
 * - Unlock {key}: deletes the key (any key: as etcd, no ownership check), answering the delete's
 *   header.
 * The lease is the client's: it is kept alive here only while Lock waits (see sessionFor).
 */
import type * as grpc from '@grpc/grpc-js';
import { Mutex } from '../../../recipes/mutex.js';
import { big, type Int64 } from '../../../src/protocol/codec.js';
import type { ServerContext } from './context.js';
import { etcdErrors } from './errors.js';
import { callerKv, pbType, registerUnary, sessionFor } from './recipe-calls.js';
import { bytesOf } from './wire.js';

interface PbLockRequest {
  name?: Uint8Array;
  lease?: Int64;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * A lock or election name as the recipes take it (a string): the request's bytes, which must be
 * UTF-8 and not empty. Refused otherwise, with the reason.
 */
export function recipeName(b: Uint8Array | null | undefined, what: string): string {
  const bytes = bytesOf(b);
  if (bytes.length === 0) throw etcdErrors.emptyKey;
  try {
    return utf8.decode(bytes);
  } catch {
    throw {
      code: 3, // INVALID_ARGUMENT
      details: `conclave serve: the ${what} name must be UTF-8 text (Conclave's recipes name keys with strings)`,
    };
  }
}

export function registerLock(server: grpc.Server, ctx: ServerContext): void {
  // Both calls run as the caller (callerKv: its permissions, as etcd's v3lock runs its calls).
  registerUnary<PbLockRequest>(
    server,
    ctx,
    '/v3lockpb.Lock/Lock',
    pbType('LockRequest'),
    pbType('LockResponse'),
    async (req, signal, call) => {
      const name = recipeName(req.name, 'lock');
      const session = await sessionFor(callerKv(ctx, call), big(req.lease), signal);
      try {
        // etcd's Lock is Go's Mutex: a second Lock under the same lease shares the held key.
        const held = await new Mutex(session, name, { sameSession: 'share' }).lock({ signal });
        return { header: ctx.currentHeader(), key: Buffer.from(held.key) };
      } finally {
        session.orphan();
      }
    },
  );
  registerUnary<{ key?: Uint8Array }>(
    server,
    ctx,
    '/v3lockpb.Lock/Unlock',
    pbType('UnlockRequest'),
    pbType('UnlockResponse'),
    async (req, signal, call) => {
      const key = bytesOf(req.key);
      if (key.length === 0) throw etcdErrors.emptyKey;
      const r = await callerKv(ctx, call).delete(key, { signal });
      return { header: ctx.header(r.revision) };
    },
  );
}
