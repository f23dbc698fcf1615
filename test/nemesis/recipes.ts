/**
 * Recipe safety under the nemesis: the Jepsen lock test with fencing tokens, on Mutex; Election
 * (one leader per term, terms and proclamations in order for observers); WorkQueue (no
 * acknowledged job lost, none acked twice). The Mutex test first:
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
import { Election } from '../../recipes/election.js';
import { Mutex } from '../../recipes/mutex.js';
import { WorkQueue, workQueueAttemptsLimitMax } from '../../recipes/work-queue.js';
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

/** A worker's session on its own client (endpoints rotated so workers start on different members). */
async function workerClient(c: FaultCluster, w: number): Promise<KV> {
  const endpoints = [...c.endpoints.slice(w % c.size), ...c.endpoints.slice(0, w % c.size)];
  return connect({ backend: 'etcd', endpoints, callTimeoutMs: 3000, dialTimeoutMs: 1000, lazy: true });
}

function countError(kinds: Record<string, number>, step: string, err: unknown): void {
  const code = err instanceof ConclaveError ? err.code : (err as Error)?.name;
  const k = `${step} ${code}`;
  kinds[k] = (kinds[k] ?? 0) + 1;
}

/** What one observer saw: each observation with a leader (term = token, value proclaimed). */
export interface Seen {
  readonly observer: number;
  readonly token: number;
  readonly value: string;
  readonly revision: number;
}

export interface ElectionRunResult {
  readonly wins: Grant[];
  readonly proclaimed: number;
  readonly observed: number;
  readonly errors: number;
  readonly errorKinds: Record<string, number>;
  readonly violations: string[];
}

/**
 * Election safety from what observers saw: per observer, terms (leader tokens) and revisions never
 * go back, and within one term the leader's proclamations arrive in the order it made them (each
 * value is `<token>:<n>`, n counting up per term). A value proclaimed under one term never shows
 * under another.
 */
export function checkObservations(seen: readonly Seen[]): string[] {
  const out: string[] = [];
  const last = new Map<number, Seen>();
  for (const s of seen) {
    const [t, n] = s.value.split(':').map(Number);
    if (t !== s.token) out.push(`observer ${s.observer} saw value '${s.value}' under term ${s.token}`);
    const p = last.get(s.observer);
    if (p) {
      if (s.token < p.token)
        out.push(`observer ${s.observer} saw term ${s.token} after term ${p.token} (terms went back)`);
      if (s.revision < p.revision)
        out.push(`observer ${s.observer} saw revision ${s.revision} after ${p.revision}`);
      if (s.token === p.token && n! < Number(p.value.split(':')[1]))
        out.push(
          `observer ${s.observer} saw proclamation '${s.value}' after '${p.value}' in term ${s.token} (out of order)`,
        );
    }
    last.set(s.observer, s);
    if (out.length > 20) break;
  }
  return out;
}

/**
 * Election under faults: `workers` candidates (own client and session each) campaign, proclaim a
 * few values while they lead, and resign; `observers` follow the election on their own clients
 * (restarting after a store error). Checked: no term (token) won twice, a win after another win
 * returned has a larger term (`checkGrants`), and what observers saw (`checkObservations`).
 */
export async function runElectionWorkload(
  c: FaultCluster,
  o: { workers: number; observers: number; name: string; ttlSeconds: number; stop: () => boolean },
): Promise<ElectionRunResult> {
  const wins: Grant[] = [];
  const seen: Seen[] = [];
  let proclaimed = 0;
  let errors = 0;
  const errorKinds: Record<string, number> = {};
  const kvs: KV[] = [];
  const stopObservers = new AbortController();
  try {
    const observers = Array.from({ length: o.observers }, async (_, i) => {
      const kv = await workerClient(c, o.workers + i);
      kvs.push(kv);
      while (!stopObservers.signal.aborted) {
        try {
          for await (const ob of Election.observe(kv, o.name, { signal: stopObservers.signal }))
            if (ob.leader)
              seen.push({
                observer: i,
                token: ob.leader.token,
                value: new TextDecoder().decode(ob.leader.value),
                revision: ob.revision,
              });
        } catch (err) {
          errors++;
          countError(errorKinds, 'observe', err);
          await sleep(100);
        }
      }
    });
    await Promise.all(
      Array.from({ length: o.workers }, async (_, w) => {
        const kv = await workerClient(c, w);
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
            const e = new Election(session, o.name);
            step = 'campaign';
            const invoke = performance.now();
            // The campaign value names no term yet (the key's create revision is the term); the
            // first proclamation does. Observers skip values without a term.
            const l = await e.campaign(`w${w}`, { signal: AbortSignal.timeout(6000) });
            wins.push({ worker: w, invoke, granted: performance.now(), token: l.token });
            step = 'proclaim';
            for (let n = 1; n <= 3 && !l.lost.aborted; n++) {
              await l.proclaim(`${l.token}:${n}`, { signal: AbortSignal.timeout(3000) });
              proclaimed++;
              await sleep(10 + Math.random() * 30);
            }
            step = 'resign';
            await l.resign({ signal: AbortSignal.timeout(3000) });
          } catch (err) {
            errors++;
            countError(errorKinds, step, err);
            if (step === 'resign' || step === 'proclaim') {
              await session?.close().catch(() => {});
              session = undefined;
            }
            await sleep(50);
          }
        }
        await session?.close().catch(() => {});
      }),
    );
    stopObservers.abort();
    await Promise.all(observers);
  } finally {
    stopObservers.abort();
    await Promise.all(kvs.map((k) => k.close()));
  }
  const withTerm = seen.filter((s) => /^\d+:\d+$/.test(s.value));
  return {
    wins,
    proclaimed,
    observed: withTerm.length,
    errors,
    errorKinds,
    violations: [...checkGrants(wins), ...checkObservations(withTerm)],
  };
}

/** Jobs the producer adds at most in one run (the drain after the faults stays short). */
export const workQueueJobsMax = 200;

export interface WorkQueueRunResult {
  /** Jobs whose `add` returned (acknowledged). */
  readonly added: number;
  /** Acks that succeeded (`Ok`). */
  readonly acked: number;
  /** Acknowledged jobs not acked by the end and still in the queue (left over, not lost). */
  readonly remaining: number;
  readonly errors: number;
  readonly errorKinds: Record<string, number>;
  readonly violations: string[];
}

/**
 * WorkQueue under faults: one producer adds jobs, `consumers` (own client and session each) claim
 * and ack them; after `stop()` they drain the queue (bounded by `drainMs`). Checked: no job acked
 * twice by an ack that succeeded, and no acknowledged job lost — every job whose `add` returned
 * was acked, or had an ack of unknown outcome, or is still in the queue at the end.
 */
export async function runWorkQueueWorkload(
  c: FaultCluster,
  o: { consumers: number; name: string; ttlSeconds: number; stop: () => boolean; drainMs: number },
): Promise<WorkQueueRunResult> {
  const added = new Set<string>();
  const ackedBy = new Map<string, number>();
  const ackUnknown = new Set<string>();
  const violations: string[] = [];
  let errors = 0;
  const errorKinds: Record<string, number> = {};
  const kvs: KV[] = [];
  let producing = true;
  let drainUntil = Number.POSITIVE_INFINITY;
  const allDone = () => [...added].every((id) => ackedBy.has(id) || ackUnknown.has(id));
  const queueOf = async (kv: KV, session: Session | undefined) => {
    if (session && !session.lost.aborted) return { session, wq: undefined };
    await session?.close().catch(() => {});
    const s = await Session.create(kv, { ttlSeconds: o.ttlSeconds, signal: AbortSignal.timeout(5000) });
    return { session: s, wq: undefined };
  };
  const newQueue = (s: Session) =>
    new WorkQueue(s, o.name, { visibilityTimeoutSeconds: 2, attemptsMax: workQueueAttemptsLimitMax });
  try {
    const producer = (async () => {
      const kv = await workerClient(c, 0);
      kvs.push(kv);
      let session: Session | undefined;
      let wq: WorkQueue | undefined;
      for (let n = 0; !o.stop() && n < workQueueJobsMax; n++) {
        try {
          if (!session || session.lost.aborted || !wq) {
            await wq?.close().catch(() => {});
            session = (await queueOf(kv, session)).session;
            wq = newQueue(session);
          }
          const id = await wq.add(`job-${n}`, { signal: AbortSignal.timeout(3000) });
          added.add(id);
        } catch (err) {
          errors++;
          countError(errorKinds, 'add', err);
          await wq?.close().catch(() => {});
          wq = undefined;
          await sleep(50);
        }
      }
      await wq?.close().catch(() => {});
      await session?.close().catch(() => {});
      producing = false;
      drainUntil = performance.now() + o.drainMs;
    })();
    await Promise.all(
      Array.from({ length: o.consumers }, async (_, w) => {
        const kv = await workerClient(c, w + 1);
        kvs.push(kv);
        let session: Session | undefined;
        let wq: WorkQueue | undefined;
        let step = 'session';
        while (producing || (performance.now() < drainUntil && !allDone())) {
          try {
            if (!session || session.lost.aborted || !wq) {
              step = 'session';
              await wq?.close().catch(() => {});
              session = (await queueOf(kv, session)).session;
              wq = newQueue(session);
            }
            step = 'claim';
            const job = await wq.tryClaim({ signal: AbortSignal.timeout(3000) });
            if (!job) {
              await sleep(50);
              continue;
            }
            step = 'ack';
            try {
              const r = await job.ack({ signal: AbortSignal.timeout(3000) });
              if (r.isOk()) {
                const prev = ackedBy.get(job.id);
                if (prev !== undefined)
                  violations.push(`job ${job.id} acked twice (consumers ${prev} and ${w})`);
                ackedBy.set(job.id, w);
              }
            } catch (err) {
              // The ack's txn may have applied: the job may be done without an Ok seen here.
              ackUnknown.add(job.id);
              throw err;
            }
          } catch (err) {
            errors++;
            countError(errorKinds, step, err);
            await wq?.close().catch(() => {});
            wq = undefined;
            await sleep(50);
          }
        }
        await wq?.close().catch(() => {});
        await session?.close().catch(() => {});
      }),
    );
    await producer;
    // What is left: the items still in the queue (an item's body is deleted only by its ack).
    const kv = await workerClient(c, 0);
    kvs.push(kv);
    const left = await kv.range(`${o.name}/items/`, { prefix: true, keysOnly: true });
    const inQueue = new Set(
      left.kvs.map((k) => new TextDecoder().decode(k.key).slice(`${o.name}/items/`.length)),
    );
    for (const id of added)
      if (!ackedBy.has(id) && !ackUnknown.has(id) && !inQueue.has(id))
        violations.push(`job ${id} was added (acknowledged) but never acked and is not in the queue: lost`);
    for (const id of ackedBy.keys())
      if (inQueue.has(id)) violations.push(`job ${id} was acked but its item is still in the queue`);
    return {
      added: added.size,
      acked: ackedBy.size,
      remaining: [...added].filter((id) => inQueue.has(id)).length,
      errors,
      errorKinds,
      violations,
    };
  } finally {
    await Promise.all(kvs.map((k) => k.close()));
  }
}
