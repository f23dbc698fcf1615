/**
 * Every ```ts block in README.md and docs/ compiles. A block that imports from 'conclave' (the
 * package's entry points) is a complete program: it is extracted and type-checked with tsc
 * against the sources, as a user's project would compile it against the package, and the ones on
 * the embedded store are run. Any other block is a fragment (a few lines of a larger program): it
 * is wrapped in an async function, after the names it assumes, and type-checked too. A fragment
 * declares what it assumes in an HTML comment right before its fence, which the rendered page
 * does not show:
 *
 *     <!-- snippet-context: import type { WorkQueue } from 'conclave'; declare const queue: WorkQueue; -->
 *
 * Imports inside a fragment are hoisted out of the wrapper; an import of a repository path
 * (`./backends/…`) resolves from the repository root.
 */
import { execFile } from 'node:child_process';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const repo = resolve(import.meta.dirname, '../..');
const out = join(repo, '.tmp/snippets');

/** Pages whose blocks are not checked, each with the reason (none today). */
const notCheckedYet = new Set<string>([]);

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

interface Block {
  readonly code: string;
  /** The snippet-context comment right before the fence, if any. */
  readonly context: string;
}

/** The ```ts blocks of one markdown file, each with its snippet-context. */
function blocks(markdown: string): Block[] {
  return [...markdown.matchAll(/(?:<!-- snippet-context:([\s\S]*?)-->\n)?^```ts\n([\s\S]*?)^```/gm)].map(
    (m) => ({ context: (m[1] ?? '').trim(), code: m[2] ?? '' }),
  );
}

/** A complete program imports from one of the package's entry points. */
const isProgram = (code: string) => /^import .* from 'conclave(\/(etcd|raft))?';/m.test(code);

/**
 * A fragment as a module: its context and imports at the top (repository paths made relative to
 * the snippet directory), its statements inside an async function, so top-level `await` and names
 * that other fragments also declare are fine.
 */
function fragmentModule(b: Block): string {
  const fromRepo = (line: string) => line.replace(/from '\.\/(backends|src|recipes)\//, "from '../../$1/");
  const lines = b.code.split('\n');
  const imports = lines.filter((l) => /^import /.test(l)).map(fromRepo);
  const body = lines.filter((l) => !/^import /.test(l));
  return [
    fromRepo(b.context),
    ...imports,
    'export async function fragment(): Promise<void> {',
    ...body,
    '}',
  ].join('\n');
}

const names: string[] = [];
let fragments = 0;
/** Programs on the embedded store only (no etcd needed): these are also run. */
const runnable: string[] = [];

describe('docs snippets', () => {
  it('every program and fragment in README.md and docs/ type-checks against the package', async () => {
    await rm(out, { recursive: true, force: true });
    await mkdir(out, { recursive: true });
    for (const file of await markdownFiles()) {
      const rel = relative(repo, file);
      if (notCheckedYet.has(rel)) continue;
      for (const [i, b] of blocks(await readFile(file, 'utf8')).entries()) {
        const name = `${rel.replace(/[/.]/g, '_')}_${i + 1}.ts`;
        names.push(name);
        if (!isProgram(b.code)) {
          fragments++;
          await writeFile(join(out, name), `// ${rel}, block ${i + 1} (a fragment)\n${fragmentModule(b)}\n`);
          continue;
        }
        await writeFile(join(out, name), `// ${rel}, block ${i + 1}\n${b.code}\nexport {};\n`);
        const code = b.code;
        if (/connect\('embedded:'\)/.test(code) && !/^[^/]*connect\('etcd:/m.test(code)) runnable.push(name);
      }
    }
    expect(names.length).toBeGreaterThan(10);
    expect(fragments).toBeGreaterThan(0);
    await writeFile(
      join(out, 'tsconfig.json'),
      JSON.stringify({
        extends: '../../tsconfig.json',
        compilerOptions: {
          noEmit: true,
          rootDir: '../..',
          paths: {
            conclave: ['../../index.ts'],
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
