// backends/raft/consensus must be pure and deterministic: biome forbids timers,
// clocks and I/O imports there; this check forbids Math.random, which biome cannot single out.
// Then the import graph: layers point only down and nothing forms a cycle (.ci/layers.mjs).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { checkLayers } from './layers.mjs';

const root = 'backends/raft/consensus';
const bad = [];
function walk(dir) {
  let names = [];
  try {
    names = readdirSync(dir);
  } catch {
    return;
  }
  for (const n of names) {
    const p = join(dir, n);
    if (statSync(p).isDirectory()) walk(p);
    else if (p.endsWith('.ts')) {
      readFileSync(p, 'utf8')
        .split('\n')
        .forEach((line, i) => {
          if (
            /Math\.random|crypto\.|Date\.now|performance\.now/.test(line) &&
            !line.trim().startsWith('//') &&
            !line.trim().startsWith('*')
          )
            bad.push(`${p}:${i + 1}: ${line.trim()}`);
        });
    }
  }
}
walk(root);
if (bad.length > 0) {
  console.error('consensus/ must not read clocks or draw randomness itself (inject them):');
  for (const b of bad) console.error(`  ${b}`);
  process.exit(1);
}

const layerProblems = checkLayers('.');
if (layerProblems.length > 0) {
  console.error('the import graph must point only down and hold no cycle (see .ci/layers.mjs):');
  for (const p of layerProblems) console.error(`  ${p}`);
  process.exit(1);
}
