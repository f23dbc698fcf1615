/**
 * The test-only fault switches (test/harness/fault-entry.ts) exist in no production build: nothing
 * the package ships (dist/, built by `npm run build`, which CI's `npm ci` runs through `prepare`)
 * names them or the entry, and the build's inputs exclude test/.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { testFaults } from '../harness/fault-entry.js';

const root = resolve(fileURLToPath(new URL('../..', import.meta.url)));

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? files(join(dir, e.name)) : [join(dir, e.name)],
  );
}

describe('fault switches stay out of the build', () => {
  it('the build compiles only src, recipes and backends', () => {
    const cfg = JSON.parse(readFileSync(join(root, 'tsconfig.build.json'), 'utf8')) as { include: string[] };
    expect(cfg.include.some((p) => p.startsWith('test'))).toBe(false);
  });

  it('no file under dist/ names a fault switch or the fault entry', () => {
    const dist = join(root, 'dist');
    expect(existsSync(dist), 'dist/ is missing: run `npm run build` (CI builds it in `npm ci`)').toBe(true);
    const needles = ['--test-fault', 'fault-entry', ...testFaults];
    const hits: string[] = [];
    const all = files(dist);
    for (const f of all) {
      const text = readFileSync(f, 'utf8');
      for (const n of needles) if (text.includes(n)) hits.push(`${f}: ${n}`);
    }
    expect(all.length).toBeGreaterThan(10);
    expect(hits).toEqual([]);
  });
});
