/**
 * Recipe safety under the nemesis: the Jepsen lock test with fencing tokens, on Mutex.
 *
 * Workers (each its own client and session) loop: lock, write the lock's fencing token to a guarded
 * resource (it accepts a token only if it is ≥ the last one it accepted, as a storage service
 * guarding itself with fencing would), hold briefly, unlock. Faults make sessions expire and
 * holders lose their lock without hearing it in time; the resource's rejection is what keeps them
 * harmless, so rejections are expected. What must never happen:
 * - a lock granted after another grant returned carries a smaller token (tokens go back in real
 *   time: the resource would then reject the rightful holder, or accept a stale one);
 * - two grants carry the same token.
 */

import { connect } from '../../backends/connect.js';
import { Mutex } from '../../recipes/mutex.js';
import { ConclaveError } from '../../src/errors.js';
import type { KV } from '../../src/kv.js';
import { Session } from '../../src/session.js';
import type { FaultCluster } from './cluster.js';

export interface Grant {
  readonly worker: number;
  readonly invoke: number;
  readonly granted: number;
  readonly token: number;
}

export interface MutexRunResult {
  readonly grants: Grant[];
  readonly accepted: number;
  readonly rejected: number;
  readonly errors: number;
  /** Failed attempts by step and error code, e.g. "session unavailable" → 3. */
  readonly errorKinds: Record<string, number>;
  /** Violations found (empty when safe). */
  readonly violations: string[];
}

/** The guarded resource: accepts a write only with a token ≥ the last accepted one. */
export class FencedResource {
  last = 0;
  accepted = 0;
  rejected = 0;
  write(token: number): boolean {
    if (token < this.last) {
      this.rejected++;
      return false;
    }
    this.last = token;
    this.accepted++;
    return true;
  }
}

/** Checks grants: no token reused, and a grant after another grant returned has a larger token. */
export function checkGrants(grants: readonly Grant[]): string[] {
  const out: string[] = [];
  const byToken = new Map<number, Grant>();
  for (const g of grants) {
    const d = byToken.get(g.token);
    if (d) out.push(`token ${g.token} granted twice (workers ${d.worker} and ${g.worker})`);
    byToken.set(g.token, g);
  }
  const sorted = [...grants].sort((a, b) => a.granted - b.granted);
  // Running max of tokens among grants that returned before each invocation.
  for (const b of grants) {
    for (const a of sorted) {
      if (a.granted >= b.invoke) break;
      if (a.token >= b.token)
        out.push(
          `worker ${b.worker} was granted token ${b.token} after worker ${a.worker}'s grant of ${a.token} had returned`,
        );
    }
    if (out.length > 20) break;
  }
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs `workers` lock loops against the cluster until `stop()`; bounded per call by timeouts. */
export async function runMutexWorkload(
  c: FaultCluster,
  o: { workers: number; name: string; ttlSeconds: number; stop: () => boolean },
): Promise<MutexRunResult> {
  const resource = new FencedResource();
  const grants: Grant[] = [];
  let errors = 0;
  const errorKinds: Record<string, number> = {};
  const kvs: KV[] = [];
  try {
    await Promise.all(
      Array.from({ length: o.workers }, async (_, w) => {
        const endpoints = [...c.endpoints.slice(w % c.size), ...c.endpoints.slice(0, w % c.size)];
        const kv = await connect({
          backend: 'etcd',
          endpoints,
          callTimeoutMs: 3000,
          dialTimeoutMs: 1000,
          lazy: true,
        });
        kvs.push(kv);
        let session: Session | undefined;
        let step = 'session';
        while (!o.stop()) {
          try {
            if (!session || session.lost.aborted) {
              step = 'session';
              await session?.close().catch(() => {});
              session = await Session.create(kv, {
                ttlSeconds: o.ttlSeconds,
                signal: AbortSignal.timeout(5000),
              });
            }
            const m = new Mutex(session, o.name);
            step = 'lock';
            const invoke = performance.now();
            const h = await m.lock({ signal: AbortSignal.timeout(6000) });
            grants.push({ worker: w, invoke, granted: performance.now(), token: h.token });
            resource.write(h.token);
            await sleep(10 + Math.random() * 40);
            step = 'unlock';
            // An unlock that failed may have left the key: the same session would then re-grant
            // the same generation (as etcd's Go Mutex does), so start over with a new session.
            await h.unlock({ signal: AbortSignal.timeout(3000) });
          } catch (err) {
            errors++;
            const code = err instanceof ConclaveError ? err.code : (err as Error)?.name;
            const k = `${step} ${code}`;
            errorKinds[k] = (errorKinds[k] ?? 0) + 1;
            if (step === 'unlock') {
              await session?.close().catch(() => {});
              session = undefined;
            }
            await sleep(50);
          }
        }
        await session?.close().catch(() => {});
      }),
    );
  } finally {
    await Promise.all(kvs.map((k) => k.close()));
  }
  return {
    grants,
    accepted: resource.accepted,
    rejected: resource.rejected,
    errors,
    errorKinds,
    violations: checkGrants(grants),
  };
}
