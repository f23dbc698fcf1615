/**
 * etcd's server-side Election service (etcd 3.4 `etcdserver/api/v3election`), served at
 * /v3electionpb.Election/{Campaign,Proclaim,Leader,Observe,Resign} with Conclave's own
 * `Election` running in this member against its store. The key layout (`name/<lease in hex>`,
 * the lowest create revision leads) is the one etcd's Go Election, `etcdctl elect` and Conclave's
 * Election share, so candidates of all three queue together.
 *
 * - Campaign {name, lease, value}: waits until elected and answers the LeaderKey {name, key, rev
 *   (the key's create revision: the term), lease}. Lease 0 takes a new 60 s lease, as etcd does.
 *   A call the client cancels leaves no key behind.
 * - Proclaim {leader, value}: the recipe's fenced write (the key's create revision must still be
 *   `rev`), else "election: not leader". Resign {leader}: the fenced delete; not being the
 *   leader any more is no error (as etcd). Both need `leader` ("\"leader\" field must be provided").
 *   A LeaderKey is a value the client holds (it may come from another member, or from before a
 *   restart), so these two act on the key it names rather than on an object kept here.
 * - Leader {name}: the current leader's key-value, else "election: no leader".
 * - Observe {name}: a stream of the leader's key-value at every change of leader and every
 *   proclaim (the recipe's observe: resynced from the present after compaction); while there is
 *   no leader nothing is sent, as etcd.
 * Plain Go errors of etcd's handlers reach clients as code Unknown with their text (grpc-go).
 */
import type * as grpc from '@grpc/grpc-js';
import { Election } from '../../../recipes/election.js';
import type { KV } from '../../../src/kv.js';
import { big, type Int64 } from '../../../src/protocol/codec.js';
import type { KeyValue } from '../../../src/types.js';
import type { OpenStream, ServerContext } from './context.js';
import { etcdErrors, type GrpcFailure } from './errors.js';
import {
  callerAuthFailure,
  callerKv,
  encoderOf,
  goError,
  isGrpcFailure,
  pbType,
  registerUnary,
  sessionFor,
} from './recipe-calls.js';
import { recipeName } from './v3lock.js';
import { bytesOf, kvToPb, wire64 } from './wire.js';

interface PbLeaderKey {
  name?: Uint8Array;
  key?: Uint8Array;
  rev?: Int64;
  lease?: Int64;
}

export const electionErrors = {
  noLeader: goError('election: no leader'),
  notLeader: goError('election: not leader'),
  missingLeaderKey: goError('"leader" field must be provided'),
} as const;

/** Reads of a leader key that changed under us before Leader gives the latest answer it has. */
const leaderReadsMax = 3;

/** The leader's full key-value (the recipe reports key, value and term; the wire wants all fields). */
async function leaderKv(kv: KV, name: string, signal: AbortSignal): Promise<KeyValue | undefined> {
  let found: KeyValue | undefined;
  for (let i = 0; i < leaderReadsMax; i++) {
    const l = await Election.leader(kv, name, { signal });
    if (!l) return undefined;
    found = await kv.get(l.key, { signal });
    if (found && found.createRevision === l.token) return found;
  }
  return found;
}

function leaderKeyOf(k: PbLeaderKey | null | undefined): { key: Uint8Array; rev: number; lease: bigint } {
  if (!k) throw electionErrors.missingLeaderKey;
  const key = bytesOf(k.key);
  if (key.length === 0) throw etcdErrors.emptyKey;
  return { key, rev: Number(big(k.rev)), lease: big(k.lease) };
}

export function registerElection(server: grpc.Server, ctx: ServerContext): void {
  // Every call runs its recipe as the caller (callerKv: the caller's permissions, as etcd's).

  registerUnary<{ name?: Uint8Array; lease?: Int64; value?: Uint8Array }>(
    server,
    ctx,
    '/v3electionpb.Election/Campaign',
    pbType('CampaignRequest'),
    pbType('CampaignResponse'),
    async (req, signal, call) => {
      const name = recipeName(req.name, 'election');
      const session = await sessionFor(callerKv(ctx, call), big(req.lease), signal);
      try {
        const won = await new Election(session, name).campaign(bytesOf(req.value), { signal });
        return {
          header: ctx.currentHeader(),
          leader: {
            name: bytesOf(req.name),
            key: Buffer.from(won.key),
            rev: won.token,
            lease: wire64(session.lease),
          },
        };
      } finally {
        session.orphan();
      }
    },
  );

  registerUnary<{ leader?: PbLeaderKey; value?: Uint8Array }>(
    server,
    ctx,
    '/v3electionpb.Election/Proclaim',
    pbType('ProclaimRequest'),
    pbType('ProclaimResponse'),
    async (req, signal, call) => {
      const l = leaderKeyOf(req.leader);
      const t = await callerKv(ctx, call).txn(
        {
          compare: [{ key: l.key, target: 'create', result: '=', value: l.rev }],
          success: [
            {
              type: 'put',
              key: l.key,
              value: bytesOf(req.value),
              options: l.lease > 0n ? { lease: l.lease } : {},
            },
          ],
          failure: [],
        },
        { signal },
      );
      if (!t.succeeded) throw electionErrors.notLeader;
      return { header: ctx.header(t.revision) };
    },
  );

  registerUnary<{ leader?: PbLeaderKey }>(
    server,
    ctx,
    '/v3electionpb.Election/Resign',
    pbType('ResignRequest'),
    pbType('ResignResponse'),
    async (req, signal, call) => {
      const l = leaderKeyOf(req.leader);
      const t = await callerKv(ctx, call).txn(
        {
          compare: [{ key: l.key, target: 'create', result: '=', value: l.rev }],
          success: [{ type: 'delete', key: l.key }],
          failure: [],
        },
        { signal },
      );
      return { header: ctx.header(t.revision) };
    },
  );

  registerUnary<{ name?: Uint8Array }>(
    server,
    ctx,
    '/v3electionpb.Election/Leader',
    pbType('LeaderRequest'),
    pbType('LeaderResponse'),
    async (req, signal, call) => {
      const name = recipeName(req.name, 'election');
      const found = await leaderKv(callerKv(ctx, call), name, signal);
      if (!found) throw electionErrors.noLeader;
      return { header: ctx.currentHeader(), kv: kvToPb(found) };
    },
  );

  const leaderReq = pbType('LeaderRequest');
  server.register(
    '/v3electionpb.Election/Observe',
    ((call: grpc.ServerWritableStream<{ name?: Uint8Array }, object>) => {
      const stop = new AbortController();
      let ended = false;
      const open: OpenStream = {
        requireLeader: false,
        fail(f: GrpcFailure) {
          if (ended) return;
          ended = true;
          stop.abort();
          ctx.streams.delete(open);
          call.emit('error', { code: f.code, details: f.details });
        },
      };
      if (ctx.leaderMissing(call.metadata)) return open.fail(etcdErrors.noLeader);
      if (ctx.streams.size >= ctx.o.streamsMax) return open.fail(etcdErrors.tooManyRequests);
      ctx.streams.add(open);
      call.once('cancelled', () => {
        ended = true;
        stop.abort();
        ctx.streams.delete(open);
      });
      const observe = async (request: { name?: Uint8Array }) => {
        try {
          const kv = callerKv(ctx, call as never);
          const name = recipeName(request.name, 'election');
          for await (const o of Election.observe(kv, name, { signal: stop.signal })) {
            if (!o.leader) continue;
            const found = await kv.get(o.leader.key, { signal: stop.signal });
            if (!found || stop.signal.aborted) continue;
            // Backpressure: wait for the stream to drain rather than queue without bound.
            if (!call.write({ header: ctx.header(o.revision), kv: kvToPb(found) }))
              await new Promise<void>((r) => {
                const done = () => {
                  stop.signal.removeEventListener('abort', done);
                  r();
                };
                call.once('drain', done);
                stop.signal.addEventListener('abort', done, { once: true });
              });
          }
          if (!ended) {
            ended = true;
            ctx.streams.delete(open);
            call.end();
          }
        } catch (err) {
          if (stop.signal.aborted) return;
          open.fail(callerAuthFailure(err) ?? (isGrpcFailure(err) ? err : ctx.failure(err)));
        }
      };
      const run = (request: { name?: Uint8Array }) => void observe(request);
      // grpc-js hands a server-streaming handler its request; the JSON gateway's stream call
      // delivers it as the first message read.
      if (call.request !== undefined) run(call.request);
      else call.once('data', run);
    }) as grpc.UntypedHandleCall,
    encoderOf(pbType('LeaderResponse')),
    (b: Buffer) => leaderReq.decode(b),
    'serverStream',
  );
}
