/** `npm run sim -- --seeds N [--seed S] [--steps K] [--nodes N] [--no-faults] [--disk]` */
import { startProgress } from '../../bench/progress.js';
import { runSeed } from './cluster.js';

const args = process.argv.slice(2);
const get = (name: string): string | undefined => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : undefined;
};
const seeds = Number(get('seeds') ?? 100);
const first = Number(get('seed') ?? 1);
const steps = Number(get('steps') ?? 2000);
const nodes = Number(get('nodes') ?? 5);
const faults = !args.includes('--no-faults');
const disk = args.includes('--disk');
const only = get('seed') !== undefined && get('seeds') === undefined;

const start = performance.now();
let failed = 0;
let virtualMs = 0;
const count = only ? 1 : seeds;
// Progress on stderr (a live line on a terminal, a plain line every 10 s otherwise); seeds run
// synchronously, so the loop yields to the event loop every ~100 ms to let the line be drawn.
const progress = count > 1 ? startProgress('sim', count) : undefined;
let yieldedAt = performance.now();
for (let i = 0; i < count; i++) {
  const seed = first + i;
  const r = runSeed({ seed, steps, nodes, faults, disk });
  virtualMs += r.virtualMs;
  progress?.advance(1, r.error ? 1 : 0);
  if (performance.now() - yieldedAt > 100) {
    await new Promise((resolve) => setImmediate(resolve));
    yieldedAt = performance.now();
  }
  if (r.error) {
    failed++;
    console.log(`FAIL seed ${seed}: ${r.error}`);
    console.log(
      `  replay: npm run sim -- --seed ${seed} --steps ${steps} --nodes ${nodes}${faults ? '' : ' --no-faults'}${disk ? ' --disk' : ''}`,
    );
  }
}
progress?.stop();
const wallMs = performance.now() - start;
console.log(
  `${count} seeds, ${count - failed} passed, ${failed} failed; ${(wallMs / 1000).toFixed(1)} s wall, ${(virtualMs / 1000).toFixed(0)} s simulated (${(virtualMs / wallMs).toFixed(0)}× real time)`,
);
process.exit(failed > 0 ? 1 : 0);
