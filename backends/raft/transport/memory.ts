/**
 * In-memory transport for in-process clusters (tests, the embedded backend), with fault hooks:
 * drop, delay, partition and heal. Messages are delivered asynchronously (a macrotask later), so a
 * node never re-enters its own loop from `send`.
 */
import type { Message, NodeId } from '../consensus/types.js';
import type { Transport } from './transport.js';

/** Messages queued per destination before new ones are dropped (Raft tolerates loss). */
export const queuedMessagesMax = 65_536;

export class MemoryTransport implements Transport {
  readonly #handlers = new Map<NodeId, (m: Message) => void>();
  readonly #cut = new Set<string>();
  #dropRate = 0;
  #delayMs = 0;
  #random: () => number = Math.random;
  #pending = 0;

  register(id: NodeId, onMessage: (m: Message) => void): void {
    this.#handlers.set(id, onMessage);
  }

  unregister(id: NodeId): void {
    this.#handlers.delete(id);
  }

  send(messages: readonly Message[]): void {
    for (const m of messages) {
      if (this.#cut.has(`${m.from}>${m.to}`)) continue;
      if (this.#dropRate > 0 && this.#random() < this.#dropRate) continue;
      if (this.#pending >= queuedMessagesMax) continue;
      this.#pending++;
      const deliver = () => {
        this.#pending--;
        this.#handlers.get(m.to)?.(m);
      };
      if (this.#delayMs > 0) setTimeout(deliver, this.#delayMs);
      else setImmediate(deliver);
    }
  }

  /** Cuts every link between the groups (nodes in no group keep their links). */
  partition(...groups: NodeId[][]): void {
    for (const a of groups)
      for (const b of groups) if (a !== b) for (const x of a) for (const y of b) this.#cut.add(`${x}>${y}`);
  }

  isolate(id: NodeId, all: NodeId[]): void {
    this.partition(
      [id],
      all.filter((x) => x !== id),
    );
  }

  heal(): void {
    this.#cut.clear();
  }

  setDrop(rate: number, random: () => number = Math.random): void {
    this.#dropRate = rate;
    this.#random = random;
  }

  setDelay(ms: number): void {
    this.#delayMs = ms;
  }
}
