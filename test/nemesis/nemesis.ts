/**
 * A seeded schedule of faults against a `FaultCluster`: one fault at a time, held for a while, then
 * healed, with quiet gaps in between (so the cluster recovers and the workload makes progress).
 *
 * Kinds (etcd's robustness suite and Jepsen's etcd analysis use the same families):
 * - kill / kill-leader: SIGKILL a member (the leader on purpose), restart it on its data dir;
 * - pause / pause-leader: SIGSTOP, later SIGCONT (a paused leader wakes up believing it leads);
 * - isolate / isolate-leader: every peer link of one member blocked both ways (with 3 members the
 *   isolated one is the minority and the others the majority; with the leader isolated, the old
 *   leader is in the minority and the majority elects a new one);
 * - freeze-leader: the leader paused *and* isolated, then woken up while still isolated for a
 *   second before the links heal: it believes it leads until its next check-quorum round, while
 *   the majority has elected a new leader and taken writes;
 * - oneway: one direction of one link blocked (asymmetric: a member hears a peer that cannot hear it);
 * - delay: every peer link delayed (tens to a couple of hundred ms, with jitter);
 * - flap: one link blocked and unblocked every 100–400 ms;
 * - reset: the live connections of one link destroyed (the dialer reconnects).
 * The same seed gives the same schedule (kinds, members picked by index, durations) on every target;
 * "the leader" is whoever leads when the fault starts.
 */
import { Prng } from '../sim/prng.js';
import { type FaultCluster, waitLeader } from './cluster.js';

export const faultKinds = [
  'kill',
  'kill-leader',
  'pause',
  'pause-leader',
  'isolate',
  'isolate-leader',
  'freeze-leader',
  'oneway',
  'delay',
  'flap',
  'reset',
] as const;
export type FaultKind = (typeof faultKinds)[number];

export interface FaultEvent {
  readonly kind: FaultKind;
  readonly member: number | undefined;
  /** performance.now() when the fault was injected and when it was healed. */
  readonly start: number;
  end: number;
  readonly detail: string;
}

export interface NemesisOptions {
  seed: number;
  /** Stop injecting new faults after this long. */
  durationMs: number;
  kinds?: readonly FaultKind[];
  /** How long a fault is held (default 800–2500 ms). */
  faultMs?: readonly [number, number];
  /** Quiet time between faults (default 500–1500 ms). */
  quietMs?: readonly [number, number];
  /** Called with a line per fault. */
  log?: (line: string) => void;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs the schedule; resolves (every fault healed, killed members restarted) after `durationMs`. */
export async function runNemesis(c: FaultCluster, o: NemesisOptions): Promise<FaultEvent[]> {
  const prng = new Prng(o.seed ^ 0x6e656d);
  const kinds = o.kinds ?? faultKinds;
  const [fMin, fMax] = o.faultMs ?? [800, 2500];
  const [qMin, qMax] = o.quietMs ?? [500, 1500];
  const range = (a: number, b: number) => a + prng.next() * (b - a);
  const t0 = performance.now();
  const events: FaultEvent[] = [];
  while (performance.now() - t0 < o.durationMs) {
    await sleep(range(qMin, qMax));
    if (performance.now() - t0 >= o.durationMs) break;
    const kind = prng.pick(kinds);
    const hold = range(fMin, fMax);
    // Drawn whether used or not, so the schedule does not depend on the target's leader.
    const any = prng.int(c.size);
    const other = (any + 1 + prng.int(c.size - 1)) % c.size;
    const delayMs = Math.round(range(20, 200));
    const needsLeader = kind.endsWith('-leader');
    const member = needsLeader ? ((await c.leader()) ?? any) : any;
    const start = performance.now();
    let detail = '';
    let heal: () => Promise<void>;
    switch (kind) {
      case 'kill':
      case 'kill-leader':
        await c.kill(member);
        detail = `SIGKILL m${member}`;
        heal = () => c.restart(member);
        break;
      case 'pause':
      case 'pause-leader':
        c.pause(member);
        detail = `SIGSTOP m${member}`;
        heal = async () => c.resume(member);
        break;
      case 'isolate':
      case 'isolate-leader':
        c.net.isolate(member);
        detail = `isolate m${member}`;
        heal = async () => c.net.heal();
        break;
      case 'freeze-leader':
        c.net.isolate(member);
        c.pause(member);
        detail = `SIGSTOP and isolate m${member}`;
        heal = async () => {
          c.resume(member);
          await sleep(1000);
          c.net.heal();
        };
        break;
      case 'oneway':
        c.net.block(member, other);
        detail = `block m${member}→m${other}`;
        heal = async () => c.net.heal();
        break;
      case 'delay':
        for (let a = 0; a < c.size; a++)
          for (let b = 0; b < c.size; b++) if (a !== b) c.net.delay(a, b, delayMs, delayMs / 4);
        detail = `delay all links ${delayMs} ms`;
        heal = async () => c.net.heal();
        break;
      case 'flap': {
        detail = `flap m${member}↔m${other}`;
        let on = false;
        let flapping = true;
        const flapper = (async () => {
          while (flapping) {
            on = !on;
            c.net.block(member, other, on);
            c.net.block(other, member, on);
            await sleep(range(100, 400));
          }
        })();
        heal = async () => {
          flapping = false;
          await flapper;
          c.net.heal();
        };
        break;
      }
      case 'reset':
        c.net.cut(member, other);
        detail = `reset m${member}↔m${other}`;
        heal = async () => {};
        break;
    }
    const ev: FaultEvent = { kind, member, start, end: start, detail };
    events.push(ev);
    o.log?.(`${((start - t0) / 1000).toFixed(1)}s ${detail} for ${Math.round(hold)} ms`);
    await sleep(hold);
    await heal();
    ev.end = performance.now();
  }
  return events;
}

/** What a fixed scenario may ask of the workload running beside it. */
export interface ScenarioContext {
  /**
   * Resolves when an acknowledged put returns whose call was at most `maxAgeMs` ago (or after
   * `timeoutMs`, false). Resolved from the recorder's callback, so what follows (a SIGKILL) runs
   * before the event loop turns again.
   */
  ackedWrite(maxAgeMs: number, timeoutMs: number): Promise<boolean>;
}

/**
 * How recent the acknowledged put that triggers `crash-all` must be (its call, ms before the
 * crash). Under `ack-before-fsync` a member writes what it saved `writebackMs` (1 s) later, and a
 * put is saved after its call, so a put called this recently is still only in memory on every
 * member when they are killed.
 */
export const crashAfterWriteMs = 300;

/**
 * A fixed scenario, deterministic for `ack-before-fsync`: right after a put is acknowledged (one
 * called at most `crashAfterWriteMs` earlier), every member is SIGKILLed at once, then all are
 * restarted and the workload goes on. A correct member had that put on disk before it answered,
 * so nothing is lost. Under `ack-before-fsync` every member held it only in memory (written
 * `writebackMs` later): the cluster comes back without it, and the history shows an acknowledged
 * write lost (later reads miss it, later writes reuse its revision) — every run, whatever the load.
 */
export async function crashAllScenario(
  c: FaultCluster,
  log: (line: string) => void,
  ctx: ScenarioContext,
): Promise<FaultEvent[]> {
  await sleep(1500);
  await waitLeader(c, 10_000);
  const burst = await ctx.ackedWrite(crashAfterWriteMs, 30_000);
  const crash: FaultEvent = {
    kind: 'kill',
    member: undefined,
    start: performance.now(),
    end: 0,
    detail: 'SIGKILL every member',
  };
  // The signals go out before any await: `kill` sends SIGKILL synchronously, then waits for exits.
  const exits = [...Array(c.size).keys()].map((i) => c.kill(i));
  await Promise.all(exits);
  log(
    `SIGKILL every member ${burst ? `right after an acknowledged put called < ${crashAfterWriteMs} ms earlier` : '(no recent acknowledged put in 30 s)'}`,
  );
  await sleep(500);
  for (let i = 0; i < c.size; i++) await c.restart(i);
  log('restart every member');
  await waitLeader(c);
  crash.end = performance.now();
  // The workload reads and writes on the restarted cluster (what was lost shows there).
  await sleep(3000);
  return [crash];
}

/**
 * A fixed scenario: the two members that form a quorum without the third crash together, after the
 * third was cut off long enough to miss writes they committed. A correct member keeps what it
 * acknowledged, so when the third comes back with one restarted member, the restarted member's log
 * wins the election and nothing is lost. It is the scenario that exposes a member acknowledging
 * appends before they are durable (the power-loss model in test/harness/fault-entry.ts): then the
 * restarted member comes back empty and votes for the member that missed the writes.
 */
export async function quorumCrashScenario(
  c: FaultCluster,
  log: (line: string) => void,
): Promise<FaultEvent[]> {
  const events: FaultEvent[] = [];
  await sleep(1500);
  const leader = (await waitLeader(c, 10_000)) ?? 0;
  const behind = (leader + 1) % c.size;
  const other = (leader + 2) % c.size;
  const isolated: FaultEvent = {
    kind: 'isolate',
    member: behind,
    start: performance.now(),
    end: 0,
    detail: `isolate m${behind}`,
  };
  events.push(isolated);
  c.net.isolate(behind);
  log(`isolate m${behind} (leader m${leader})`);
  await sleep(2500);
  const crash: FaultEvent = {
    kind: 'kill',
    member: other,
    start: performance.now(),
    end: 0,
    detail: `SIGKILL m${leader} and m${other}`,
  };
  events.push(crash);
  await Promise.all([c.kill(leader), c.kill(other)]);
  log(`SIGKILL m${leader} and m${other}`);
  await sleep(500);
  c.net.heal();
  isolated.end = performance.now();
  await c.restart(other);
  log(`heal; restart m${other}`);
  // The survivors elect a leader (bounded), then take writes for a while.
  await waitLeader(c);
  await sleep(2000);
  await c.restart(leader);
  crash.end = performance.now();
  log(`restart m${leader}`);
  await sleep(2000);
  return events;
}

/** Fixed scenarios by name (`npm run lincheck -- --scenario crash-all`). */
export const scenarios: Record<
  'quorum-crash' | 'crash-all',
  (c: FaultCluster, log: (line: string) => void, ctx: ScenarioContext) => Promise<FaultEvent[]>
> = { 'quorum-crash': quorumCrashScenario, 'crash-all': crashAllScenario };
export type ScenarioName = keyof typeof scenarios;
