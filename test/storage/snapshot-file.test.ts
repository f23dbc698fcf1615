/**
 * Snapshot files written in pieces: the data is written straight from the snapshot's
 * buffer in chunks and checksummed in slices between event-loop turns, yet the file is byte for
 * byte the one-buffer format (`"CSNP"` + CRC-32C + SnapshotFile protobuf), reads back, and a
 * damaged byte anywhere is still caught (the file is read back in pieces, each checksummed as it
 * arrives).
 */
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Snapshot } from '../../backends/raft/consensus/types.js';
import { crc32c } from '../../backends/raft/storage/crc32c.js';
import { encodeSnapshotFile } from '../../backends/raft/storage/records.js';
import {
  Snapshotter,
  snapshotReadChunkBytes,
  snapshotWriteChunkBytes,
} from '../../backends/raft/storage/snapshots.js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';

const root = mkdtempSync(join(tmpdir(), 'conclave-snapfile-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;

function snapshot(index: number, data: Uint8Array): Snapshot {
  return { meta: { index, term: 3, confState: { voters: [1, 2, 3], learners: [4] } }, data };
}

/** The file as the one-buffer writer made it. */
function oneBuffer(s: Snapshot): Buffer {
  const body = encodeSnapshotFile({
    index: s.meta.index,
    term: s.meta.term,
    voters: [...s.meta.confState.voters],
    learners: [...s.meta.confState.learners],
    data: s.data,
  });
  const b = Buffer.alloc(8 + body.length);
  b.set([0x43, 0x53, 0x4e, 0x50], 0);
  b.set(body, 8);
  b.writeUInt32LE(crc32c(b, 0, 8), 4);
  return b;
}

describe('snapshot files', () => {
  it('snapshot file — written in chunks with a sliced checksum, it is the one-buffer format and reads back', async () => {
    const dir = join(root, `s${n++}`);
    const snaps = new Snapshotter(dir);
    await snaps.init();
    const sizes = [0, 1, 127, 128, 300_000, 2 * snapshotWriteChunkBytes + 12_345];
    let turns = 0;
    for (const [i, size] of sizes.entries()) {
      const data = new Uint8Array(size);
      for (let j = 0; j < size; j++) data[j] = (j * 31 + i) & 0xff;
      const s = snapshot(10 + i, data);
      await snaps.save(s, {
        nextTurn: () => {
          turns++;
          return new Promise((r) => setImmediate(r));
        },
      });
      const [newest] = await snaps.list();
      const file = readFileSync(join(dir, newest!.name));
      expect(file.equals(oneBuffer(s))).toBe(true);
      const back = await snaps.read(newest!.name);
      expect(back.meta).toEqual(s.meta);
      expect(Buffer.from(back.data).equals(Buffer.from(data))).toBe(true);
    }
    // The large one was checksummed in many slices, not in one go.
    expect(turns).toBeGreaterThan(10);
  });

  it('snapshot file — a damaged byte in the data is a checksum failure; loading falls back to the older file', async () => {
    const dir = join(root, `s${n++}`);
    const snaps = new Snapshotter(dir);
    await snaps.init();
    const older = new Uint8Array(1000).fill(1);
    const newer = new Uint8Array(2 * snapshotReadChunkBytes + 5).fill(2);
    await snaps.save(snapshot(5, older));
    await snaps.save(snapshot(9, newer));
    const [newest] = await snaps.list();
    const path = join(dir, newest!.name);
    const file = readFileSync(path);
    // The magic, the stored CRC, the head, the last byte, and bytes in later read and write pieces.
    for (const at of [
      0,
      4,
      8,
      20,
      file.length - 1,
      snapshotWriteChunkBytes + 3,
      snapshotReadChunkBytes + 1,
    ]) {
      const bad = Buffer.from(file);
      bad[at]! ^= 0x10;
      writeFileSync(path, bad);
      const err = await snaps.read(newest!.name).catch((e: unknown) => e);
      expect(ConclaveError.is(err, ErrorCode.Corrupt)).toBe(true);
      const loaded = await snaps.loadNewest();
      expect(loaded!.snapshot.meta.index).toBe(5);
      expect(loaded!.skipped).toEqual([newest!.name]);
    }
  });
});
