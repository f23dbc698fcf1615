/**
 * The docs' complete programs compile: every ```ts block in README.md and docs/ that imports from
 * 'conclave' (the package's entry points) is extracted and type-checked with tsc against the
 * sources, as a user's project would compile it against the package. Blocks without such an
 * import are fragments (a few lines of a larger program) and are not checked.
 */
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const repo = resolve(import.meta.dirname, '../..');
const out = join(repo, '.tmp/snippets');

/**
 * Pages whose programs are not checked yet, each with the reason. docs/errors.md belongs to the
 * etcd client's work in progress; its example uses names it does not declare.
 */
const notCheckedYet = new Set(['docs/errors.md']);

async function markdownFiles(): Promise<string[]> {
  const files = [join(repo, 'README.md')];
  const walk = async (d: string): Promise<void> => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.endsWith('.md')) files.push(p);
    }
  };
  await walk(join(repo, 'docs'));
  return files.sort();
}

/** The complete programs of one markdown file: ```ts blocks that import from 'conclave'. */
function programs(markdown: string): string[] {
  const blocks = [...markdown.matchAll(/^```ts\n([\s\S]*?)^```/gm)].map((m) => m[1] ?? '');
  return blocks.filter((b) => /^import .* from 'conclave(\/(etcd|raft))?';$/m.test(b));
}

const names: string[] = [];
/** Programs on the embedded store only (no etcd needed): these are also run. */
const runnable: string[] = [];

describe('docs snippets', () => {
  it('every complete program in README.md and docs/ type-checks against the package', async () => {
    await rm(out, { recursive: true, force: true });
    await mkdir(out, { recursive: true });
    for (const file of await markdownFiles()) {
      const rel = relative(repo, file);
      if (notCheckedYet.has(rel)) continue;
      const found = programs(await readFile(file, 'utf8'));
      for (const [i, code] of found.entries()) {
        const name = `${rel.replace(/[/.]/g, '_')}_${i + 1}.ts`;
        await writeFile(join(out, name), `// ${rel}, program ${i + 1}\n${code}\nexport {};\n`);
        names.push(name);
        if (/connect\('embedded:'\)/.test(code) && !/^[^/]*connect\('etcd:/m.test(code)) runnable.push(name);
      }
    }
    expect(names.length).toBeGreaterThan(10);
    await writeFile(
      join(out, 'tsconfig.json'),
      JSON.stringify({
        extends: '../../tsconfig.json',
        compilerOptions: {
          noEmit: true,
          rootDir: '../..',
          paths: {
            conclave: ['../../src/index.ts'],
            'conclave/etcd': ['../../backends/etcd/index.ts'],
            'conclave/raft': ['../../backends/raft/index.ts'],
          },
        },
        include: ['*.ts'],
      }),
    );
    const tsc = join(repo, 'node_modules/typescript/bin/tsc');
    const r = await run(process.execPath, [tsc, '-p', out], { cwd: out, maxBuffer: 16 * 1024 * 1024 }).then(
      () => '',
      (err: { stdout?: string }) => err.stdout ?? String(err),
    );
    expect(r, 'type errors in docs snippets (the file name says where each comes from)').toBe('');
  }, 120_000);

  it('every complete program on the embedded store runs to the end and exits by itself', async () => {
    expect(runnable.length).toBeGreaterThan(5);
    const failures: string[] = [];
    for (const name of runnable) {
      const r = await run(process.execPath, ['--import', 'tsx', join(out, name)], {
        cwd: out,
        timeout: 60_000,
        env: { ...process.env, TSX_TSCONFIG_PATH: join(out, 'tsconfig.json') },
        maxBuffer: 16 * 1024 * 1024,
      }).then(
        () => undefined,
        (err: { stderr?: string; signal?: string }) =>
          `${name}: ${err.signal ?? ''} ${err.stderr ?? String(err)}`,
      );
      if (r) failures.push(r);
    }
    expect(failures).toEqual([]);
  }, 600_000);
});
