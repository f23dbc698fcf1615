// The import graph of the project's TypeScript: layers only point down, and no cycle anywhere.
//
// Layers (a file may import its own layer and the ones below it):
//   index.ts (the package root)      everything below; nothing imports it but tests, bench, examples
//   backends/connect.ts              composition: src/, backends/etcd/, backends/raft/
//   backends/etcd/, backends/raft/   src/ (and never each other); the raft server's etcd v3lock and
//                                    v3election services also import recipes/ (they serve recipes)
//   recipes/                         src/
//   src/                             nothing above it (the contract)
// Static imports, `export … from`, dynamic `import()` and type-only imports all count: a type-only
// cycle still ties two files together for every reader and every refactor.
// Used by .ci/purity.mjs (npm run lint) and by test/unit/layers.test.ts (which feeds it a broken graph).
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import ts from 'typescript';

const roots = ['index.ts', 'src', 'recipes', 'backends', 'test', 'bench', 'examples'];

/** Repo-relative posix paths of every .ts file under the roots (no node_modules, dist, testdata). */
export function listSources(repo) {
  const out = [];
  const walk = (rel) => {
    const abs = join(repo, rel);
    let st;
    try {
      st = statSync(abs);
    } catch {
      return;
    }
    if (st.isDirectory()) {
      for (const n of readdirSync(abs)) {
        if (n === 'node_modules' || n === 'dist' || n === 'testdata' || n.startsWith('.')) continue;
        walk(rel === '' ? n : `${rel}/${n}`);
      }
    } else if (/\.(ts|mts)$/.test(rel) && !rel.endsWith('.d.ts')) out.push(rel);
  };
  for (const r of roots) walk(r);
  return out;
}

/** file → the project files it imports (relative specifiers only; `x.js` resolves to `x.ts`). */
export function importGraph(repo, files) {
  const known = new Set(files);
  const graph = new Map();
  for (const f of files) {
    const text = readFileSync(join(repo, f), 'utf8');
    const info = ts.preProcessFile(text, true, true);
    const deps = new Set();
    for (const { fileName } of info.importedFiles) {
      if (!fileName.startsWith('.')) continue;
      const target = relative(repo, join(repo, dirname(f), fileName))
        .split(sep)
        .join('/');
      const candidates = [target, target.replace(/\.js$/, '.ts'), target.replace(/\.mjs$/, '.mts')];
      const hit = candidates.find((c) => known.has(c));
      if (hit) deps.add(hit);
    }
    graph.set(f, [...deps]);
  }
  return graph;
}

function layerOf(f) {
  if (f === 'index.ts') return 'root';
  if (f === 'backends/connect.ts') return 'connect';
  if (f.startsWith('src/')) return 'src';
  if (f.startsWith('recipes/')) return 'recipes';
  if (f.startsWith('backends/etcd/')) return 'etcd';
  if (f.startsWith('backends/raft/')) return 'raft';
  if (f.startsWith('backends/')) return 'backends-other';
  return 'outside'; // test/, bench/, examples/: may import anything
}

const allowed = {
  src: ['src'],
  recipes: ['src', 'recipes'],
  etcd: ['src', 'etcd'],
  raft: ['src', 'raft'],
  connect: ['src', 'etcd', 'raft', 'connect'],
  'backends-other': ['src'],
  root: ['src', 'recipes', 'etcd', 'raft', 'connect', 'backends-other'],
};
// The raft server's v3lock/v3election services run Conclave's recipes server-side.
const recipeUsers = new Set(['backends/raft/server/v3lock.ts', 'backends/raft/server/v3election.ts']);

/** Edges that point up or sideways: "from → to (why)". */
export function layerViolations(graph) {
  const bad = [];
  for (const [from, deps] of graph) {
    const lf = layerOf(from);
    if (lf === 'outside') continue;
    for (const to of deps) {
      const lt = layerOf(to);
      if (lt === 'outside') {
        bad.push(`${from} → ${to} (production code imports a test, bench or example file)`);
      } else if (!allowed[lf].includes(lt) && !(recipeUsers.has(from) && lt === 'recipes')) {
        bad.push(`${from} → ${to} (${lf} may import only ${allowed[lf].join(', ')})`);
      }
    }
  }
  return bad;
}

/** Every cycle, each as a path "a → b → … → a" (one per strongly connected component). */
export function importCycles(graph) {
  // Tarjan's strongly connected components, iterative (deep graphs must not blow the stack).
  let index = 0;
  const idx = new Map();
  const low = new Map();
  const onStack = new Set();
  const stack = [];
  const sccs = [];
  for (const start of graph.keys()) {
    if (idx.has(start)) continue;
    const work = [[start, 0]];
    idx.set(start, index);
    low.set(start, index);
    index++;
    stack.push(start);
    onStack.add(start);
    while (work.length > 0) {
      const top = work[work.length - 1];
      const [v, i] = top;
      const deps = graph.get(v) ?? [];
      if (i < deps.length) {
        top[1] = i + 1;
        const w = deps[i];
        if (!idx.has(w)) {
          idx.set(w, index);
          low.set(w, index);
          index++;
          stack.push(w);
          onStack.add(w);
          work.push([w, 0]);
        } else if (onStack.has(w)) {
          low.set(v, Math.min(low.get(v), idx.get(w)));
        }
        continue;
      }
      work.pop();
      if (work.length > 0) {
        const parent = work[work.length - 1][0];
        low.set(parent, Math.min(low.get(parent), low.get(v)));
      }
      if (low.get(v) === idx.get(v)) {
        const comp = [];
        let w;
        do {
          w = stack.pop();
          onStack.delete(w);
          comp.push(w);
        } while (w !== v);
        const selfLoop = (graph.get(v) ?? []).includes(v);
        if (comp.length > 1 || selfLoop) sccs.push(comp);
      }
    }
  }
  // Show one concrete cycle through each component: BFS from its first file back to itself.
  return sccs.map((comp) => {
    const inComp = new Set(comp);
    const first = comp.sort()[0];
    const prev = new Map();
    const queue = [first];
    const seen = new Set([first]);
    let end = null;
    while (queue.length > 0 && end === null) {
      const v = queue.shift();
      for (const w of graph.get(v) ?? []) {
        if (!inComp.has(w)) continue;
        if (w === first) {
          end = v;
          break;
        }
        if (!seen.has(w)) {
          seen.add(w);
          prev.set(w, v);
          queue.push(w);
        }
      }
    }
    const path = [];
    for (let v = end; v !== undefined && v !== first; v = prev.get(v)) path.unshift(v);
    return [first, ...path, first].join(' → ');
  });
}

/** All problems of the tree at `repo` (empty when the layering holds). */
export function checkLayers(repo) {
  const graph = importGraph(repo, listSources(repo));
  return [
    ...layerViolations(graph).map((v) => `layer: ${v}`),
    ...importCycles(graph).map((c) => `cycle: ${c}`),
  ];
}
