/** A tiny synchronous cluster for focused consensus tests: explicit ticks, explicit delivery. */
import { MemoryStorage } from '../../backends/raft/consensus/memory-storage.js';
import { decodeConfChange, Raft } from '../../backends/raft/consensus/raft.js';
import { type Entry, EntryType, type Message, type ReadState } from '../../backends/raft/consensus/types.js';

export class TestCluster {
  readonly nodes = new Map<number, Raft>();
  readonly storages = new Map<number, MemoryStorage>();
  readonly applied = new Map<number, Entry[]>();
  readonly readStates = new Map<number, ReadState[]>();
  /** Messages produced but not yet delivered. */
  queue: Message[] = [];
  readonly down = new Set<string>();

  constructor(
    ids: number[],
    opts: {
      preVote?: boolean;
      checkQuorum?: boolean;
      electionTicks?: number;
      maxUncommittedEntriesBytes?: number;
    } = {},
  ) {
    for (const id of ids) {
      const storage = new MemoryStorage({ voters: ids, learners: [] });
      this.storages.set(id, storage);
      this.applied.set(id, []);
      this.readStates.set(id, []);
      // Distinct, deterministic election timeouts: node i times out after electionTicks + i - 1.
      const e = opts.electionTicks ?? 10;
      this.nodes.set(
        id,
        new Raft({
          id,
          electionTicks: e,
          heartbeatTicks: 1,
          storage,
          random: () => (id - 1) / e,
          preVote: opts.preVote ?? true,
          checkQuorum: opts.checkQuorum ?? true,
          ...(opts.maxUncommittedEntriesBytes !== undefined
            ? { maxUncommittedEntriesBytes: opts.maxUncommittedEntriesBytes }
            : {}),
        }),
      );
    }
  }

  node(id: number): Raft {
    return this.nodes.get(id)!;
  }

  /** Drains Ready of every node into the queue (persisting and applying as a driver would). */
  flush(): void {
    for (const [id, r] of this.nodes) {
      if (!r.hasReady()) continue;
      const rd = r.ready();
      const st = this.storages.get(id)!;
      if (rd.snapshot) st.applySnapshot(rd.snapshot);
      st.append(rd.entries);
      if (rd.hardState) st.setHardState(rd.hardState);
      this.queue.push(...rd.messages);
      for (const e of rd.committed) {
        this.applied.get(id)!.push(e);
        if (e.type === EntryType.ConfChange) r.applyConfChange(decodeConfChange(e.data));
      }
      this.readStates.get(id)!.push(...rd.readStates);
      r.advance(rd);
    }
  }

  /** Cuts traffic between `a` and `b` in both directions. */
  isolate(id: number): void {
    for (const other of this.nodes.keys())
      if (other !== id) this.down.add(`${id}-${other}`).add(`${other}-${id}`);
  }

  heal(): void {
    this.down.clear();
  }

  /** Delivers everything until quiet (at most `roundsMax` rounds). */
  stabilize(roundsMax = 100): void {
    for (let i = 0; i < roundsMax; i++) {
      this.flush();
      if (this.queue.length === 0 && ![...this.nodes.values()].some((r) => r.hasReady())) return;
      const q = this.queue;
      this.queue = [];
      for (const m of q) {
        if (this.down.has(`${m.from}-${m.to}`)) continue;
        this.nodes.get(m.to)?.step(m);
      }
    }
  }

  tick(id: number, n = 1): void {
    for (let i = 0; i < n; i++) this.node(id).tick();
  }

  tickAll(n = 1): void {
    for (let i = 0; i < n; i++) for (const r of this.nodes.values()) r.tick();
  }

  leaders(): number[] {
    return [...this.nodes].filter(([, r]) => r.role === 'leader').map(([id]) => id);
  }

  data(id: number): string[] {
    return this.applied
      .get(id)!
      .filter((e) => e.type === EntryType.Normal && e.data.length > 0)
      .map((e) => new TextDecoder().decode(e.data));
  }
}

export const bytes = (s: string) => new TextEncoder().encode(s);
