/**
 * Pending ReadIndex requests at the leader (Raft dissertation §6.4), confirmed in batches.
 *
 * A read is safe to serve at the commit index recorded when it arrived once the leader has heard
 * from a quorum *after* the read arrived: then no newer leader could have committed anything the
 * read would miss. One heartbeat round proves that for every read that arrived before the round
 * was sent, so reads are batched into rounds:
 *
 * - a read arriving while no round is in flight starts one at once (one heartbeat broadcast);
 * - reads arriving while a round is in flight queue up and form the next round, sent when the
 *   round in flight is confirmed or at the next heartbeat tick, whichever comes first;
 * - a round's heartbeats carry its sequence number as context, which followers echo. A voter's
 *   answer to round s proves it still followed this leader after every round <= s started, so
 *   round s is confirmed once a quorum (the leader included) has answered round s or a later one,
 *   and confirming it answers every read of every earlier round as well, in arrival order.
 *
 * A read queued after a round was sent is never answered by that round's acks: its round number
 * is higher. etcd-io/raft's ReadOnlySafe instead sends one heartbeat broadcast per request (its
 * context being the request's) and confirms earlier requests with a later one's quorum; the
 * batching here caps the broadcasts at about one per round trip however many reads arrive.
 */
import type { Message, NodeId } from './types.js';

/** Reads waiting at the leader at once (queued, in flight, or held for the term's first commit); beyond it, new reads are dropped. */
export const pendingReadsMax = 4096;

interface PendingRead {
  readonly req: Message;
  /** The leader's commit index when the read arrived: the index it is answered with. */
  readonly index: number;
}

interface Round {
  readonly seq: number;
  readonly reads: PendingRead[];
}

const enc = new TextEncoder();

/** A round's heartbeat context: its sequence number in decimal ASCII (readable in scenario output). */
function roundContext(seq: number): Uint8Array {
  return enc.encode(String(seq));
}

/** The round sequence number a heartbeat answer echoes, or 0 if its context is not a round's. */
function parseRound(ctx: Uint8Array): number {
  if (ctx.length === 0 || ctx.length > 15) return 0;
  let n = 0;
  for (const b of ctx) {
    if (b < 0x30 || b > 0x39) return 0;
    n = n * 10 + (b - 0x30);
  }
  return n;
}

export class ReadOnly {
  /** The last round number handed out; never reset, so an answer to an old round cannot match a new one. */
  #seq = 0;
  /** Reads that arrived after the last round was sent: they form the next round. */
  #queued: PendingRead[] = [];
  /** Rounds sent and not yet confirmed, oldest first; their numbers are consecutive. */
  #inflight: Round[] = [];
  /** Per voter, the highest round number it has answered (in this term). */
  readonly #acked = new Map<NodeId, number>();
  #size = 0;

  /** Reads queued or in flight. */
  get size(): number {
    return this.#size;
  }

  /** Queues a read answered with `index` once confirmed; false (dropped) if `pendingReadsMax` are waiting. */
  add(req: Message, index: number, alsoWaiting = 0): boolean {
    if (this.#size + alsoWaiting >= pendingReadsMax) return false;
    this.#queued.push({ req, index });
    this.#size++;
    return true;
  }

  /**
   * Starts a round with the queued reads if there are some and no round is in flight; returns the
   * context its heartbeats must carry, or undefined when nothing is to be sent now.
   */
  startIfIdle(): Uint8Array | undefined {
    if (this.#inflight.length > 0 || this.#queued.length === 0) return undefined;
    return this.#startRound();
  }

  /**
   * The context for the leader's periodic heartbeat: a new round if reads are queued; else the
   * newest round in flight again (its heartbeats may have been lost); else none (empty).
   */
  heartbeatContext(): Uint8Array {
    if (this.#queued.length > 0) return this.#startRound();
    const last = this.#inflight[this.#inflight.length - 1];
    return last ? roundContext(last.seq) : new Uint8Array(0);
  }

  #startRound(): Uint8Array {
    const seq = ++this.#seq;
    this.#inflight.push({ seq, reads: this.#queued });
    this.#queued = [];
    return roundContext(seq);
  }

  /**
   * Records voter `from`'s answer to the heartbeat carrying `ctx`; returns the reads now
   * confirmed, in arrival order. `self` (the leader) counts as having answered every round.
   */
  ack(
    from: NodeId,
    ctx: Uint8Array,
    self: NodeId,
    quorum: number,
    voters: ReadonlySet<NodeId>,
  ): PendingRead[] {
    const seq = parseRound(ctx);
    const first = this.#inflight[0];
    if (seq === 0 || !first || seq < first.seq || !voters.has(from)) return [];
    if ((this.#acked.get(from) ?? 0) >= seq) return [];
    this.#acked.set(from, seq);
    // The highest round answered by a quorum: the quorum-th largest answered round among voters.
    const answered: number[] = [];
    for (const id of voters) answered.push(id === self ? this.#seq : (this.#acked.get(id) ?? 0));
    answered.sort((a, b) => b - a);
    const confirmed = answered[quorum - 1] ?? 0;
    if (confirmed < first.seq) return [];
    const done = this.#inflight.splice(0, Math.min(this.#inflight.length, confirmed - first.seq + 1));
    const out: PendingRead[] = [];
    for (const r of done) for (const p of r.reads) out.push(p);
    this.#size -= out.length;
    return out;
  }

  /** Forgets every pending read (a new term or role: their clients retry). */
  reset(): void {
    this.#queued = [];
    this.#inflight = [];
    this.#acked.clear();
    this.#size = 0;
  }
}
