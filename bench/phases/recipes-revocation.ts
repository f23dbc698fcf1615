/**
 * `revoke-notify`: how long a revocation request takes to reach a revocable holder. One worker
 * locks a revocable `Mutex` (recipes/mutex.ts, `{ revocable: true }`), a requester on the same
 * client calls `requestRevocation` (recipes/internal/revocation.ts), and the holder unlocks as
 * soon as its `revocationRequested` fires; then again. ops/s = whole cycles (lock, request,
 * notice, unlock); latency = from calling `requestRevocation` to the holder's signal firing (the
 * request's put and its delivery through the holder's watch of its own key). Conclave client only.
 */
import { requestRevocation } from '../../recipes/internal/revocation.js';
import { Mutex } from '../../recipes/mutex.js';
import { Session } from '../../src/session.js';
import { nowMs } from '../clock.js';
import { round } from '../cpu.js';
import { Histogram } from '../histogram.js';
import { measuredLoop } from './measure.js';
import { conclaveKvOf } from './recipes-common.js';
import type { Phase, PhaseContext, PhaseResult } from './types.js';

const sessionTtlSeconds = 10;
/** A request that never reaches the holder fails the op instead of hanging the run. */
const noticeTimeoutMs = 15_000;

export function revocationPhase(): Phase {
  return {
    name: 'revoke-notify',
    description: 'a revocation request reaching a revocable Mutex holder (request to notice), one holder',
    run: (ctx) => runRevocation(ctx),
  };
}

async function runRevocation(ctx: PhaseContext): Promise<PhaseResult> {
  const kv = conclaveKvOf(ctx, 'revocation requests');
  const session = await Session.create(kv, { ttlSeconds: sessionTtlSeconds, signal: ctx.signal });
  try {
    const mutex = new Mutex(session, `${ctx.prefix}/revoke`, { revocable: true });
    let notice: Histogram | undefined;
    const op = async (): Promise<void> => {
      const signal = AbortSignal.any([ctx.signal, AbortSignal.timeout(noticeTimeoutMs)]);
      const held = await mutex.lock({ signal });
      try {
        const heard = new Promise<void>((resolve, reject) => {
          if (held.revocationRequested.aborted) return resolve();
          held.revocationRequested.addEventListener('abort', () => resolve(), { once: true });
          signal.addEventListener('abort', () => reject(signal.reason), { once: true });
        });
        const t0 = nowMs();
        await requestRevocation(kv, held, { by: 'bench', signal });
        await heard;
        notice?.recordMs(nowMs() - t0);
      } finally {
        await held.unlock();
      }
    };
    return await measuredLoop(
      ctx,
      1,
      op,
      (r) => ({ latency: 'request to notice', cycleP50Ms: round(r.histogram.summary().p50Ms) }),
      {
        measuring: () => {
          notice = new Histogram();
        },
        latency: () => notice!.summary(),
      },
    );
  } finally {
    await session.close().catch(() => undefined);
  }
}
