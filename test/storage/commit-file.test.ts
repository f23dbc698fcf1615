/**
 * The commit index survives a SIGKILL between synced writes: a member that learned a commit
 * index (a commit-only Ready, which costs no fsync) and was killed before its next synced write
 * restarts applying every entry it knew committed, so its serializable reads do not go back to
 * an older revision than it served before the kill. Before the COMMIT file, the restarted member
 * applied only up to the commit index of the WAL's last synced HardState.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { afterAll, expect, it } from 'vitest';
import { RaftNode } from '../../backends/raft/node/node.js';
import { DiskStorage } from '../../backends/raft/storage/disk-storage.js';
import { MemoryTransport } from '../../backends/raft/transport/memory.js';

const here = dirname(fileURLToPath(import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'conclave-commit-file-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Runs the child until it has saved, then SIGKILLs it (bounded: 60 s for tsx and the saves). */
function saveAndKill(dir: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['--import', 'tsx', join(here, 'commit-child.ts'), dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let saved = false;
    let stderr = '';
    child.stderr!.on('data', (d) => {
      stderr += String(d);
    });
    const guard = setTimeout(() => child.kill('SIGKILL'), 60_000);
    createInterface({ input: child.stdout! }).on('line', (line) => {
      if (line === 'saved') {
        saved = true;
        child.kill('SIGKILL');
      }
    });
    child.on('exit', () => {
      clearTimeout(guard);
      if (saved) resolve();
      else reject(new Error(`commit child exited before saving:\n${stderr}`));
    });
  });
}

function restart(
  dir: string,
): { node: RaftNode; storage: DiskStorage } | Promise<{ node: RaftNode; storage: DiskStorage }> {
  return DiskStorage.open({ dataDir: dir, nodeId: 1, voters: [1, 2, 3] }).then((storage) => {
    const node = new RaftNode({
      id: 1,
      voters: [1, 2, 3],
      transport: new MemoryTransport(),
      tickMs: 1000,
      electionTicks: 10,
      heartbeatTicks: 1,
      minTtlSeconds: 1,
      requestTimeoutMs: 1000,
      now: Date.now,
      random: Math.random,
      storage,
    });
    return { node, storage };
  });
}

it('a member killed after a commit-only save restarts applying up to that commit index, with no leader', async () => {
  const dir = join(root, 'killed');
  await saveAndKill(dir);
  const { node, storage } = await restart(dir);
  try {
    expect(storage.initialState().hardState.commit).toBe(5);
    // Alone (its peers are not running): what it knew committed applies without a leader.
    await new Promise((r) => setTimeout(r, 50));
    expect(node.store.appliedIndex).toBe(5);
    expect(node.store.revision).toBe(6);
  } finally {
    await node.stop();
  }
});

it('a COMMIT file is used only up to the last entry the log holds, and ignored when it does not check', async () => {
  const dir = join(root, 'clamped');
  await saveAndKill(dir);
  // A commit index beyond the log (the file is written in place with a checksum; forge one).
  const b = Buffer.alloc(12);
  b.writeBigUInt64LE(99n, 0);
  const { crc32c } = await import('../../backends/raft/storage/crc32c.js');
  b.writeUInt32LE(crc32c(b, 0, 0, 8), 8);
  writeFileSync(join(dir, 'COMMIT'), b);
  let s = await DiskStorage.open({ dataDir: dir, nodeId: 1, voters: [1, 2, 3] });
  expect(s.initialState().hardState.commit).toBe(5);
  await s.close();
  // A damaged file: the WAL's synced HardState (commit 2) is what is known.
  b[0] = 3;
  writeFileSync(join(dir, 'COMMIT'), b);
  s = await DiskStorage.open({ dataDir: dir, nodeId: 1, voters: [1, 2, 3] });
  expect(s.initialState().hardState.commit).toBe(2);
  await s.close();
});
