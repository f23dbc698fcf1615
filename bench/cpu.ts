/**
 * CPU accounting around a measured pass: the server processes' user+system time from
 * /proc/<pid>/stat (fields 14 and 15, in clock ticks), and this process's own CPU time from
 * `process.cpuUsage()` (the client side; for the embedded backend it includes the whole cluster).
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

let ticksPerSecond: number | undefined;

function clockTicks(): number {
  if (ticksPerSecond === undefined) {
    try {
      ticksPerSecond = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      ticksPerSecond = 100; // Linux's USER_HZ on every mainstream architecture.
    }
  }
  return ticksPerSecond;
}

/** utime + stime of one process in ms, or undefined when it cannot be read (gone, not Linux). */
export function processCpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is parenthesised and may contain spaces: split after its ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]); // field 14 overall
    const stime = Number(fields[12]); // field 15 overall
    if (!Number.isFinite(utime) || !Number.isFinite(stime)) return undefined;
    return ((utime + stime) / clockTicks()) * 1000;
  } catch {
    return undefined;
  }
}

export interface CpuSample {
  readonly serverMs: number | undefined;
  readonly clientMs: number;
}

export function sampleCpu(serverPids: readonly number[]): CpuSample {
  let serverMs: number | undefined = serverPids.length > 0 ? 0 : undefined;
  for (const pid of serverPids) {
    const ms = processCpuMs(pid);
    serverMs = ms === undefined || serverMs === undefined ? undefined : serverMs + ms;
  }
  const u = process.cpuUsage();
  return { serverMs, clientMs: (u.user + u.system) / 1000 };
}

export interface CpuPerOp {
  /** Server CPU (all members together) per operation, µs; absent when the server PIDs are unknown. */
  readonly serverCpuUsPerOp?: number;
  /** Server CPU used during the pass as a fraction of one core. */
  readonly serverCores?: number;
  /** This process's CPU per operation, µs. */
  readonly clientCpuUsPerOp: number;
}

export function cpuPerOp(before: CpuSample, after: CpuSample, ops: number, elapsedMs: number): CpuPerOp {
  const n = Math.max(ops, 1);
  const out: { -readonly [K in keyof CpuPerOp]: CpuPerOp[K] } = {
    clientCpuUsPerOp: round(((after.clientMs - before.clientMs) * 1000) / n),
  };
  if (before.serverMs !== undefined && after.serverMs !== undefined) {
    out.serverCpuUsPerOp = round(((after.serverMs - before.serverMs) * 1000) / n);
    out.serverCores = round((after.serverMs - before.serverMs) / elapsedMs, 3);
  }
  return out;
}

export function round(x: number, digits = 1): number {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/**
 * The longest synchronous stretch of the event loop, in CPU time: the most CPU this process used
 * between two consecutive callbacks of a 1 ms timer. A wall-clock loop delay
 * (perf_hooks.monitorEventLoopDelay) grows whenever a loaded machine does not schedule the
 * process, and misses a stall that starts before its timer first fires; CPU time between two
 * ticks grows only with the work done in between. It counts the process's other threads too
 * (garbage-collection helpers), so it can overstate the main thread's stretch, never understate
 * it. Returns the stop function, which gives the figure in ms.
 */
export function cpuStretchMeter(): () => number {
  let last = process.cpuUsage();
  let maxMs = 0;
  const tick = () => {
    const d = process.cpuUsage(last);
    last = process.cpuUsage();
    maxMs = Math.max(maxMs, (d.user + d.system) / 1000);
  };
  const t = setInterval(tick, 1);
  return () => {
    tick();
    clearInterval(t);
    return maxMs;
  };
}
