/**
 * Pending ReadIndex requests at the leader (§6.4): each is confirmed by a heartbeat round carrying
 * its context; once a quorum acknowledges a round, that request and every earlier one are answered
 * with the commit index recorded when they arrived (requests queue in arrival order).
 */
import type { Message, NodeId } from './types.js';

/** Reads waiting for a heartbeat quorum at once; beyond it, new reads are refused by the caller. */
export const pendingReadsMax = 4096;

interface Pending {
  readonly req: Message;
  readonly index: number;
  readonly acks: Set<NodeId>;
}

const keyOf = (ctx: Uint8Array): string =>
  Buffer.from(ctx.buffer, ctx.byteOffset, ctx.byteLength).toString('latin1');

export class ReadOnly {
  #queue: Array<{ key: string; p: Pending }> = [];
  readonly #byKey = new Map<string, Pending>();

  /** Queues a read; false if the same context is already pending or the queue is full. */
  add(req: Message, index: number, self: NodeId): boolean {
    const key = keyOf(req.context);
    if (this.#byKey.has(key) || this.#queue.length >= pendingReadsMax) return false;
    const p: Pending = { req, index, acks: new Set([self]) };
    this.#byKey.set(key, p);
    this.#queue.push({ key, p });
    return true;
  }

  /** Records `from`'s heartbeat ack of `ctx`; returns the reads that are now confirmed, in order. */
  ack(
    from: NodeId,
    ctx: Uint8Array,
    quorum: number,
    voters: ReadonlySet<NodeId>,
  ): Array<{ req: Message; index: number }> {
    const p = this.#byKey.get(keyOf(ctx));
    if (!p) return [];
    if (voters.has(from)) p.acks.add(from);
    if (p.acks.size < quorum) return [];
    const out: Array<{ req: Message; index: number }> = [];
    while (this.#queue.length > 0) {
      const head = this.#queue.shift()!;
      this.#byKey.delete(head.key);
      out.push({ req: head.p.req, index: head.p.index });
      if (head.p === p) break;
    }
    return out;
  }

  reset(): void {
    this.#queue = [];
    this.#byKey.clear();
  }
}
