/**
 * A small text format for scripted consensus scenarios. A file is a sequence of commands; after
 * each command comes `----` and the output it must produce, up to a blank line:
 *
 *   nodes 1 2 3 [prevote=false] [checkquorum=false]
 *   campaign 1 | tick 1 [n] | tick-all [n] | propose 1 text | read-index 1 ctx | transfer 1 3
 *   conf 1 add-learner|add-voter|remove 4 | compact 1 | isolate 3 | heal
 *   stabilize         (delivers until quiet, printing each delivered message)
 *   deliver [n]       (n hops, default 1: delivers only the messages already sent, printing them;
 *                      what they cause is sent, not delivered)
 *   drop              (discards every message sent and not yet delivered, printing them)
 *   status            (one line per node: role, term, lead, commit, last index, config)
 *   applied 2         (the data applied on node 2)
 *
 * REWRITE=1 regenerates the expected output — which must then be reviewed by hand.
 */
import { ProposalDropped } from '../../backends/raft/consensus/assert.js';
import type { Message } from '../../backends/raft/consensus/types.js';
import { bytes, TestCluster } from './harness.js';

const dec = new TextDecoder();

export function formatMessage(m: Message): string {
  const parts = [`${m.from}->${m.to}`, m.type, `term=${m.term}`];
  if (m.type === 'app' || m.type === 'app-resp') parts.push(`idx=${m.index}`);
  if (m.type === 'app') parts.push(`lt=${m.logTerm}`, `commit=${m.commit}`);
  if (m.entries.length > 0)
    parts.push(
      `ents=[${m.entries.map((e) => `${e.term}/${e.index}${e.data.length ? `:${e.type === 1 ? 'conf' : dec.decode(e.data)}` : ''}`).join(' ')}]`,
    );
  if (m.type === 'heartbeat') parts.push(`commit=${m.commit}`);
  if (m.reject) parts.push(`reject hint=${m.rejectHint}/${m.hintTerm}`);
  // A heartbeat's context is a ReadIndex confirmation round's number (read-only.ts).
  if (m.context.length > 0)
    parts.push(`${m.type.startsWith('heartbeat') ? 'read-round' : 'ctx'}=${dec.decode(m.context)}`);
  if (m.snapshot) parts.push(`snap=${m.snapshot.meta.index}/${m.snapshot.meta.term}`);
  if (m.type === 'read-index-resp') parts.push(`idx=${m.index}`);
  return parts.join(' ');
}

export class ScenarioRunner {
  c: TestCluster | undefined;

  run(line: string): string[] {
    const [cmd, ...args] = line.trim().split(/\s+/);
    const out: string[] = [];
    const c = (): TestCluster => {
      if (!this.c) throw new Error('no cluster yet: start with `nodes …`');
      return this.c;
    };
    const num = (i: number) => Number(args[i]);
    try {
      switch (cmd) {
        case 'nodes': {
          const ids = args.filter((a) => /^\d+$/.test(a)).map(Number);
          this.c = new TestCluster(ids, {
            preVote: !args.includes('prevote=false'),
            checkQuorum: !args.includes('checkquorum=false'),
          });
          break;
        }
        case 'campaign':
          c().node(num(0)).campaign();
          break;
        case 'tick':
          c().tick(num(0), args[1] ? num(1) : 1);
          break;
        case 'tick-all':
          c().tickAll(args[0] ? num(0) : 1);
          break;
        case 'propose':
          c()
            .node(num(0))
            .propose(bytes(args[1] ?? ''));
          break;
        case 'read-index':
          c()
            .node(num(0))
            .readIndex(bytes(args[1] ?? ''));
          break;
        case 'transfer':
          c().node(num(0)).transferLeader(num(1));
          break;
        case 'conf':
          c()
            .node(num(0))
            .proposeConfChange({ type: args[1] as 'add-voter', nodeId: num(2) });
          break;
        case 'compact': {
          const r = c().node(num(0));
          r.compact(r.log.applied, bytes(`snap@${r.log.applied}`));
          out.push(`node ${num(0)} compacted to ${r.log.snapIndex}`);
          break;
        }
        case 'isolate':
          c().isolate(num(0));
          break;
        case 'heal':
          c().heal();
          break;
        case 'stabilize':
          this.#stabilize(c(), out);
          break;
        case 'deliver':
          for (let i = 0; i < (args[0] ? num(0) : 1); i++) this.#deliverOnce(c(), out);
          break;
        case 'drop': {
          c().flush();
          for (const m of c().queue) out.push(`(dropped) ${formatMessage(m)}`);
          c().queue = [];
          break;
        }
        case 'status':
          for (const [id, r] of c().nodes) {
            const cs = r.confState();
            out.push(
              `${id}: ${r.role} term=${r.term} lead=${r.lead} commit=${r.log.committed} last=${r.log.lastIndex} voters=${cs.voters.join(',')}${cs.learners.length ? ` learners=${cs.learners.join(',')}` : ''}`,
            );
          }
          break;
        case 'applied':
          out.push(`${num(0)}: [${c().data(num(0)).join(' ')}]`);
          break;
        case 'reads':
          c().flush(); // read states reach the harness with their Ready
          out.push(
            `${num(0)}: [${c()
              .readStates.get(num(0))!
              .map((r) => `${dec.decode(r.context)}@${r.index}`)
              .join(' ')}]`,
          );
          break;
        default:
          throw new Error(`unknown command ${cmd}`);
      }
    } catch (err) {
      if (err instanceof ProposalDropped) out.push(`dropped: ${err.reason}`);
      else throw err;
    }
    return out;
  }

  #stabilize(c: TestCluster, out: string[]): void {
    for (let round = 0; round < 100; round++) if (!this.#deliverOnce(c, out)) return;
  }

  /** One hop: flushes every Ready and delivers what was sent; false when nothing was. */
  #deliverOnce(c: TestCluster, out: string[]): boolean {
    c.flush();
    if (c.queue.length === 0 && ![...c.nodes.values()].some((r) => r.hasReady())) return false;
    const q = c.queue;
    c.queue = [];
    for (const m of q) {
      const cut = c.down.has(`${m.from}-${m.to}`);
      out.push(`${cut ? '(dropped) ' : ''}${formatMessage(m)}`);
      if (!cut) c.nodes.get(m.to)?.step(m);
    }
    return true;
  }
}

/** Runs a scenario file's text; returns the file with actual outputs in place of the expected ones. */
export function runScenario(text: string): string {
  const runner = new ScenarioRunner();
  const lines = text.split('\n');
  const result: string[] = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i]!;
    i++;
    if (line.trim() === '' || line.startsWith('#')) {
      result.push(line);
      continue;
    }
    result.push(line);
    // Skip the old expected block.
    if (lines[i] === '----') {
      i++;
      while (i < lines.length && lines[i] !== '') i++;
    }
    const out = runner.run(line);
    result.push('----', ...out, '');
    if (lines[i] === '') i++;
  }
  while (result.length > 0 && result[result.length - 1] === '') result.pop();
  return `${result.join('\n')}\n`;
}
