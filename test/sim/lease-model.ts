/**
 * A seeded model of the Raft store's lease protocol, checking the lease-safety invariant at every
 * step: for every keep-alive answered with TTL t at time T, no revocation of that lease applies
 * before T + t (on the primary's clock) unless a client asked for it.
 *
 * It drives real `Leases` instances (backends/raft/store/leases.ts), one per member, exactly as
 * the node does: grants and revocations apply on every member (replicated); deadlines, the
 * "revoking" mark and keep-alives live on the lease primary; the primary's expiry pass proposes
 * revocations that apply after a random delay, or fail and are proposed again; leadership moves,
 * and the new leader's log holds a random prefix of the proposals in flight (they apply before it
 * becomes primary; the rest are dropped). A deposed leader may go on answering keep-alives for up
 * to one election timeout after its successor was elected (it has not noticed yet).
 *
 * `beforeFix` reproduces the protocol as it was before the lease-safety fix (renew refreshes any
 * known lease; a new leader refreshes leases as soon as it is elected, before proposals of earlier
 * terms apply, and without an extension), to prove the checker catches what it must.
 */
import { Leases, type Renewal } from '../../backends/raft/store/leases.js';
import { Prng } from './prng.js';

/** One member's lease state machine and primary-only bookkeeping, as the node drives it. */
export interface MemberLessor {
  grant(id: bigint, ttlSeconds: number, nowMs: number): void;
  /** A revocation applied (replicated: every member). */
  revoked(id: bigint): void;
  renew(id: bigint, nowMs: number): Renewal;
  /** The primary's expiry pass: ids whose revocation to propose. */
  expiryPass(nowMs: number): bigint[];
  revokeFailed(id: bigint): void;
  promote(nowMs: number, extendMs: number): void;
  has(id: bigint): boolean;
}

export interface LessorProtocol {
  readonly name: string;
  member(minTtlSeconds: number): MemberLessor;
  /** The new leader refreshes leases once it applied earlier terms' entries (else: once elected). */
  readonly promoteAfterEarlierTerms: boolean;
}

/** The protocol as the store implements it now. */
export const current: LessorProtocol = {
  name: 'current',
  promoteAfterEarlierTerms: true,
  member(minTtl) {
    const l = new Leases(minTtl);
    return {
      grant: (id, ttl, now) => void l.grant(id, ttl, now),
      revoked: (id) => void l.remove(id),
      renew: (id, now) => l.renew(id, now),
      expiryPass: (now) => l.startRevoking(now),
      revokeFailed: (id) => l.revokeFailed(id),
      promote: (now, extend) => l.promote(now, extend),
      has: (id) => l.get(id) !== undefined,
    };
  },
};

/** The protocol before the lease-safety fix (written out here: the old code is gone). */
export const beforeFix: LessorProtocol = {
  name: 'before the fix',
  promoteAfterEarlierTerms: false,
  member() {
    const byId = new Map<bigint, { ttl: number; expiry: number }>();
    const revoking = new Set<bigint>();
    return {
      grant: (id, ttl, now) => void byId.set(id, { ttl, expiry: now + ttl * 1000 }),
      revoked: (id) => {
        byId.delete(id);
        revoking.delete(id);
      },
      renew: (id, now) => {
        const l = byId.get(id);
        if (!l) return 0;
        l.expiry = now + l.ttl * 1000;
        return l.ttl;
      },
      expiryPass: (now) => {
        const out: bigint[] = [];
        for (const [id, l] of byId)
          if (l.expiry <= now && !revoking.has(id)) {
            revoking.add(id);
            out.push(id);
          }
        return out;
      },
      revokeFailed: (id) => void revoking.delete(id),
      promote: (now) => {
        for (const l of byId.values()) l.expiry = now + l.ttl * 1000;
      },
      has: (id) => byId.has(id),
    };
  },
};

export interface LeaseModelOptions {
  seed: number;
  steps?: number;
  members?: number;
  protocol?: LessorProtocol;
}

export interface LeaseModelResult {
  seed: number;
  steps: number;
  /** Keep-alives answered with a TTL, and answered 0 after waiting for a revocation. */
  renewed: number;
  refusedWhileExpiring: number;
  expiryRevocations: number;
  leaderChanges: number;
  error?: string;
}

const TICK_MS = 10;
const ELECTION_TIMEOUT_MS = 100;
const TTL_SECONDS = 1;

interface Proposal {
  id: bigint;
  requested: boolean;
  /** Virtual ms at which it applies (if it is not dropped or failed first). */
  applyAt: number;
  fails: boolean;
  proposer: number;
}

interface Answer {
  id: bigint;
  ttlSeconds: number;
  at: number;
  by: number;
}

/** Runs one seed; `error` names the first violation (with the step and the answer it breaks). */
export function runLeaseModel(o: LeaseModelOptions): LeaseModelResult {
  const rng = new Prng(o.seed);
  const protocol = o.protocol ?? current;
  const n = o.members ?? 3;
  const steps = o.steps ?? 2000;
  const members = Array.from({ length: n }, () => protocol.member(TTL_SECONDS));
  const res: LeaseModelResult = {
    seed: o.seed,
    steps: 0,
    renewed: 0,
    refusedWhileExpiring: 0,
    expiryRevocations: 0,
    leaderChanges: 0,
  };
  let now = 1_000_000;
  let leader = 0;
  /** Member that is lease primary now (-1 while the new leader applies earlier terms). */
  let primary = 0;
  let promoteAt = 0;
  /** A deposed leader still answering keep-alives until this time (it has not noticed). */
  let deposed: { member: number; until: number } | undefined;
  let pending: Proposal[] = [];
  const answers: Answer[] = [];
  const waiting = new Set<bigint>();
  let nextId = 1n;
  const live = (): bigint[] => {
    const ids: bigint[] = [];
    for (let i = 1n; i < nextId; i++) if (members[leader]!.has(i)) ids.push(i);
    return ids;
  };

  const applyRevoke = (p: Proposal, step: number): string | undefined => {
    if (!members[0]!.has(p.id) && !members.some((m) => m.has(p.id))) return undefined;
    if (!p.requested) {
      res.expiryRevocations++;
      for (const a of answers) {
        if (a.id !== p.id) continue;
        const until = a.at + a.ttlSeconds * 1000;
        if (now < until)
          return `step ${step}: lease ${p.id} revoked at ${now} ms, but member ${a.by} answered a keep-alive with TTL ${a.ttlSeconds} s at ${a.at} ms (promised until ${until} ms)`;
      }
    }
    for (const m of members) m.revoked(p.id);
    waiting.delete(p.id);
    return undefined;
  };

  try {
    for (let step = 1; step <= steps; step++) {
      res.steps = step;
      now += rng.int(3) === 0 ? rng.int(400) : TICK_MS;

      // Proposals apply in log order once due; a failed one is unmarked by its proposer.
      while (pending.length > 0 && pending[0]!.applyAt <= now) {
        const p = pending.shift()!;
        if (p.fails) {
          members[p.proposer]!.revokeFailed(p.id);
          continue;
        }
        const err = applyRevoke(p, step);
        if (err) throw new Error(err);
      }

      // The new leader becomes primary once the earlier terms' entries in its log applied.
      if (primary === -1 && now >= promoteAt && pending.length === 0) {
        primary = leader;
        members[leader]!.promote(now, protocol.promoteAfterEarlierTerms ? ELECTION_TIMEOUT_MS : 0);
      }
      if (deposed && now > deposed.until) deposed = undefined;

      // Leadership moves: the new leader's log holds a prefix of the proposals in flight.
      if (rng.chance(0.01)) {
        const old = leader;
        leader = (leader + 1 + rng.int(n - 1)) % n;
        res.leaderChanges++;
        const kept = rng.int(pending.length + 1);
        for (const p of pending.slice(kept)) members[p.proposer]!.revokeFailed(p.id);
        pending = pending.slice(0, kept).map((p) => ({ ...p, fails: false, applyAt: now + rng.int(60) }));
        deposed = { member: old, until: now + rng.int(ELECTION_TIMEOUT_MS + 1) };
        if (protocol.promoteAfterEarlierTerms) {
          primary = -1;
          promoteAt = now;
        } else {
          primary = leader;
          members[leader]!.promote(now, 0);
        }
      }

      // Grants and client revocations go through the log (grants apply at once here).
      if (rng.chance(0.05) && live().length < 8) {
        const id = nextId++;
        for (const m of members) m.grant(id, TTL_SECONDS, now);
      }
      const ids = live();
      if (ids.length > 0 && rng.chance(0.01) && primary >= 0) {
        pending.push({
          id: rng.pick(ids),
          requested: true,
          applyAt: now + rng.int(50),
          fails: false,
          proposer: primary,
        });
      }

      // The primary's expiry pass (every tick).
      if (primary >= 0) {
        for (const id of members[primary]!.expiryPass(now)) {
          pending.push({
            id,
            requested: false,
            applyAt: now + rng.int(300),
            fails: rng.chance(0.2),
            proposer: primary,
          });
        }
      }

      // Keep-alives, now and then late (the client stalled), to the primary or a deposed leader.
      for (const id of ids) {
        if (!rng.chance(0.3)) continue;
        const to = deposed && rng.chance(0.3) ? deposed.member : primary;
        if (to < 0) continue; // not primary: the client retries later
        const r = members[to]!.renew(id, now);
        if (r === 'expiring') {
          // Waits for the revocation and answers 0 (or "not primary" if leadership moves).
          waiting.add(id);
          res.refusedWhileExpiring++;
        } else if (r > 0) {
          answers.push({ id, ttlSeconds: r, at: now, by: to });
          res.renewed++;
        }
      }
      // Answers whose promise has run out can no longer be broken: forget them (bounded memory).
      if (answers.length > 10_000)
        answers.splice(0, answers.length, ...answers.filter((a) => a.at + a.ttlSeconds * 1000 > now));
    }
  } catch (err) {
    res.error = err instanceof Error ? err.message : String(err);
  }
  return res;
}

export function leaseModelSeeds(
  seeds: number,
  o: Omit<LeaseModelOptions, 'seed'> = {},
): { failures: string[]; totals: Omit<LeaseModelResult, 'seed' | 'error'> } {
  const failures: string[] = [];
  const totals = { steps: 0, renewed: 0, refusedWhileExpiring: 0, expiryRevocations: 0, leaderChanges: 0 };
  for (let seed = 1; seed <= seeds; seed++) {
    const r = runLeaseModel({ ...o, seed });
    if (r.error) failures.push(`seed ${seed}: ${r.error}`);
    totals.steps += r.steps;
    totals.renewed += r.renewed;
    totals.refusedWhileExpiring += r.refusedWhileExpiring;
    totals.expiryRevocations += r.expiryRevocations;
    totals.leaderChanges += r.leaderChanges;
  }
  return { failures, totals };
}
