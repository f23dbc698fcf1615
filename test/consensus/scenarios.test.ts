import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { runScenario } from './scenario.js';

const dir = join(import.meta.dirname, 'testdata');
const files = readdirSync(dir).filter((f) => f.endsWith('.txt'));

describe('raft scenarios (test/consensus/testdata)', () => {
  for (const f of files) {
    it(`scenario ${f}`, () => {
      const path = join(dir, f);
      const text = readFileSync(path, 'utf8');
      const actual = runScenario(text);
      if (process.env.REWRITE === '1') writeFileSync(path, actual);
      else expect(actual).toBe(text);
    });
  }
});
