// The import-graph check run by `npm run lint` (.ci/layers.mjs): it passes on the tree, and it
// catches what it is there to catch (an upward edge, a cycle) when one is injected.
import { describe, expect, it } from 'vitest';
// @ts-expect-error: a plain .mjs CI script without declarations
import { checkLayers, importCycles, layerViolations } from '../../.ci/layers.mjs';

type Graph = Map<string, string[]>;
const g = (edges: Record<string, string[]>): Graph => new Map(Object.entries(edges));

describe('import layers', () => {
  it('the tree points only down and holds no cycle', () => {
    expect(checkLayers('.')).toEqual([]);
  });

  it('an edge from the contract to a recipe or a backend, or to the package root, is reported', () => {
    const bad = layerViolations(
      g({
        'src/session.ts': ['recipes/mutex.ts', 'backends/raft/embedded.ts'],
        'recipes/mutex.ts': ['src/kv.ts', 'index.ts'],
        'backends/etcd/client.ts': ['backends/raft/embedded.ts'],
        'backends/raft/store/mvcc.ts': ['test/harness/etcd.ts'],
        'src/kv.ts': [],
        'index.ts': ['src/kv.ts', 'recipes/mutex.ts', 'backends/connect.ts'],
        'backends/connect.ts': ['backends/etcd/index.ts', 'backends/raft/index.ts', 'src/kv.ts'],
        'test/x.test.ts': ['index.ts', 'backends/raft/store/mvcc.ts'],
      }),
    ) as string[];
    expect(bad).toHaveLength(5);
    expect(bad.join('\n')).toMatch(/src\/session\.ts → recipes\/mutex\.ts/);
    expect(bad.join('\n')).toMatch(/src\/session\.ts → backends\/raft\/embedded\.ts/);
    expect(bad.join('\n')).toMatch(/recipes\/mutex\.ts → index\.ts/);
    expect(bad.join('\n')).toMatch(/backends\/etcd\/client\.ts → backends\/raft\/embedded\.ts/);
    expect(bad.join('\n')).toMatch(/mvcc\.ts → test\/harness\/etcd\.ts/);
  });

  it('a cycle is reported with its path, a chain without one is not', () => {
    expect(importCycles(g({ 'a.ts': ['b.ts'], 'b.ts': ['c.ts'], 'c.ts': [] }))).toEqual([]);
    expect(
      importCycles(g({ 'a.ts': ['b.ts'], 'b.ts': ['c.ts'], 'c.ts': ['a.ts'], 'd.ts': ['a.ts'] })),
    ).toEqual(['a.ts → b.ts → c.ts → a.ts']);
    expect(importCycles(g({ 'a.ts': ['a.ts'] }))).toEqual(['a.ts → a.ts']);
  });
});
