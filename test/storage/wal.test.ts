/**
 * The write-ahead log and snapshot files: round trip, segment rotation and release,
 * a torn tail at every byte offset of the last record, a flipped bit anywhere, partial and damaged
 * snapshot files.
 */
import {
  cpSync,
  promises as fsp,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Entry, HardState } from '../../backends/raft/consensus/types.js';
import { DiskStorage } from '../../backends/raft/storage/disk-storage.js';
import { RecordType, type WalRecord } from '../../backends/raft/storage/records.js';
import { Snapshotter } from '../../backends/raft/storage/snapshots.js';
import { scanSegment, Wal } from '../../backends/raft/storage/wal.js';
import { ConclaveError } from '../../src/errors.js';

const root = mkdtempSync(join(tmpdir(), 'conclave-wal-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = () => join(root, `d${n++}`);

const ent = (index: number, term = 1, data = `v${index}`): Entry => ({
  index,
  term,
  type: 0,
  data: new TextEncoder().encode(data),
});
const entRecs = (es: Entry[]): WalRecord[] => es.map((e) => ({ type: RecordType.Entry, entry: e }));

/** A data directory with entries 1..60 and snapshots at 20 and 40 (segments of 4 KiB), closed. */
async function storageWithTwoSnapshots(): Promise<string> {
  const dataDir = freshDir();
  const ds = await DiskStorage.open({ dataDir, nodeId: 1, voters: [1], segmentBytes: 4096 });
  for (let i = 1; i <= 60; i++)
    await ds.save({ entries: [ent(i)], hardState: { term: 1, vote: 1, commit: i } });
  await ds.snapshotAt(20, new TextEncoder().encode('state@20'), { voters: [1], learners: [] });
  await ds.snapshotAt(40, new TextEncoder().encode('state@40'), { voters: [1], learners: [] });
  await ds.close();
  return dataDir;
}

/** Flips a bit in the newest snapshot file of `dataDir`; returns its name. */
function damageNewestSnapshot(dataDir: string): string {
  const snapDir = join(dataDir, 'snap');
  const newest = readdirSync(snapDir).sort().reverse()[0]!;
  const b = readFileSync(join(snapDir, newest));
  b[12]! ^= 1;
  writeFileSync(join(snapDir, newest), b);
  return newest;
}
const hs = (term: number, commit: number, vote = 0): WalRecord => ({
  type: RecordType.HardState,
  hardState: { term, vote, commit },
});
const decodeAll = (es: Entry[]) => es.map((e) => `${e.index}@${e.term}:${new TextDecoder().decode(e.data)}`);

async function openWal(dir: string, after = 0, segmentBytes = 64 * 1024, log?: (m: string) => void) {
  return Wal.open({ dir, nodeId: 1, segmentBytes, ...(log ? { log } : {}) }, after);
}

function segFiles(dir: string): string[] {
  return readdirSync(dir)
    .filter((f) => f.endsWith('.wal'))
    .sort();
}

function copyDir(from: string): string {
  const to = freshDir();
  cpSync(from, to, { recursive: true });
  return to;
}

describe('wal', () => {
  it('wal — entries and hard state round-trip through close and reopen', async () => {
    const dir = freshDir();
    const { wal } = await openWal(dir);
    await wal.save([...entRecs([ent(1), ent(2), ent(3, 2)]), hs(2, 2, 1)]);
    await wal.save([...entRecs([ent(4, 2, 'x'.repeat(1000))]), hs(2, 4, 1)]);
    await wal.close();
    const { wal: w2, recovery } = await openWal(dir);
    expect(decodeAll(recovery.entries)).toEqual(['1@1:v1', '2@1:v2', '3@2:v3', `4@2:${'x'.repeat(1000)}`]);
    expect(recovery.hardState).toEqual<HardState>({ term: 2, vote: 1, commit: 4 });
    expect(recovery.truncated).toBeUndefined();
    await w2.close();
  });

  it('wal — an overwritten suffix is replaced on replay, and entries at or below the snapshot are skipped', async () => {
    const dir = freshDir();
    const { wal } = await openWal(dir);
    await wal.save(entRecs([ent(1), ent(2), ent(3), ent(4)]));
    await wal.save(entRecs([ent(3, 2, 'new3'), ent(4, 2, 'new4'), ent(5, 2)]));
    await wal.close();
    const { wal: w2, recovery } = await openWal(dir);
    expect(decodeAll(recovery.entries)).toEqual(['1@1:v1', '2@1:v2', '3@2:new3', '4@2:new4', '5@2:v5']);
    await w2.close();
    const { wal: w3, recovery: r3 } = await openWal(dir, 3);
    expect(decodeAll(r3.entries)).toEqual(['4@2:new4', '5@2:v5']);
    await w3.close();
  });

  it('wal — segments rotate at the size bound and segments covered by a snapshot are released', async () => {
    const dir = freshDir();
    const { wal } = await openWal(dir, 0, 4096);
    for (let i = 1; i <= 200; i++) await wal.save([...entRecs([ent(i, 1, 'y'.repeat(100))]), hs(1, i)]);
    expect(segFiles(dir).length).toBeGreaterThan(4);
    for (const f of segFiles(dir)) expect((await fsp.stat(join(dir, f))).size).toBeGreaterThanOrEqual(4096);
    const before = segFiles(dir).length;
    const released = await wal.releaseTo(150);
    expect(released).toBeGreaterThan(0);
    expect(segFiles(dir).length).toBe(before - released);
    await wal.close();
    // The first remaining segment starts at or below 151: the log after the snapshot is complete.
    const { wal: w2, recovery } = await openWal(dir, 150, 4096);
    expect(recovery.entries.map((e) => e.index)).toEqual(Array.from({ length: 50 }, (_, i) => 151 + i));
    expect(recovery.hardState.commit).toBe(200);
    await w2.close();
    // Without the snapshot (after = 0), the released entries are missing: refused, not served.
    await expect(openWal(dir, 0, 4096)).rejects.toThrow(/missing/);
  });

  it('wal — a torn tail at every byte offset of the last record is truncated; earlier records survive', async () => {
    const base = freshDir();
    const { wal } = await openWal(base, 0, 8192);
    await wal.save([...entRecs([ent(1), ent(2)]), hs(1, 2)]);
    await wal.save(entRecs([ent(3, 1, 'the last record, torn')]));
    await wal.close();
    const seg = segFiles(base)[0]!;
    const buf = new Uint8Array(readFileSync(join(base, seg)));
    const scan = scanSegment(buf, seg, true);
    const lastRec = scan.records[scan.records.length - 1]!;
    const recLen = scan.end - lastRec.offset;
    let truncations = 0;
    for (let k = 0; k < recLen; k++) {
      for (const mode of ['zeroed', 'short-file'] as const) {
        const dir = copyDir(base);
        const file = join(dir, seg);
        const b = new Uint8Array(readFileSync(file));
        if (mode === 'zeroed') {
          b.fill(0, lastRec.offset + k, scan.end);
          writeFileSync(file, b);
        } else writeFileSync(file, b.subarray(0, lastRec.offset + k));
        const logs: string[] = [];
        const { wal: w, recovery } = await openWal(dir, 0, 8192, (m) => logs.push(m));
        expect(
          recovery.entries.map((e) => e.index),
          `k=${k} ${mode}`,
        ).toEqual([1, 2]);
        if (recovery.truncated) {
          truncations++;
          expect(recovery.truncated.offset).toBe(lastRec.offset);
          expect(logs.join()).toMatch(/torn tail/);
        } else expect(k).toBe(0);
        // The log continues cleanly after the repair.
        await w.save(entRecs([ent(3, 2, 'rewritten')]));
        await w.close();
        const { wal: w2, recovery: r2 } = await openWal(dir, 0, 8192);
        expect(decodeAll(r2.entries)).toEqual(['1@1:v1', '2@1:v2', '3@2:rewritten']);
        expect(r2.truncated).toBeUndefined();
        await w2.close();
        rmSync(dir, { recursive: true, force: true });
      }
    }
    expect(truncations).toBeGreaterThan(recLen);
  });

  it('wal — a flipped bit anywhere in the written data is detected: never served, never silently dropped', async () => {
    const base = freshDir();
    const { wal } = await openWal(base, 0, 4096);
    for (let i = 1; i <= 100; i++)
      await wal.save([...entRecs([ent(i, 1, `value-${i}-${'z'.repeat(i % 7)}`)]), hs(1, i)]);
    await wal.close();
    const files = segFiles(base);
    expect(files.length).toBeGreaterThan(1);
    let checked = 0;
    // One copy of the directory; each trial damages one bit in place and puts the original bytes
    // back afterwards (and removes anything a refused open left behind), so a trial costs one
    // file write and one open instead of a directory copy.
    const dir = copyDir(base);
    const original = new Set(readdirSync(dir));
    for (const [fi, seg] of files.entries()) {
      const file = join(dir, seg);
      const pristine = new Uint8Array(readFileSync(file));
      const dataEnd = scanSegment(pristine, seg, fi === files.length - 1).end;
      // Every bit of the last 400 bytes of the newest segment (its final records, where a flip
      // could pass for a torn write), and a sample of every other region.
      const last = fi === files.length - 1;
      for (let bit = 0; bit < dataEnd * 8; bit += last && bit >= (dataEnd - 400) * 8 ? 1 : 11) {
        const b = new Uint8Array(pristine);
        b[bit >> 3]! ^= 1 << (bit & 7);
        writeFileSync(file, b);
        const err = await openWal(dir, 0, 4096).then(
          async ({ wal: w }) => {
            await w.close();
            return undefined;
          },
          (e: unknown) => e,
        );
        expect(ConclaveError.is(err, 'corrupt'), `bit ${bit} of ${seg}: ${String(err)}`).toBe(true);
        expect((err as Error).message).toContain(seg);
        checked++;
        writeFileSync(file, pristine);
        for (const f of readdirSync(dir)) if (!original.has(f)) rmSync(join(dir, f), { force: true });
      }
    }
    expect(checked).toBeGreaterThan(1000);
    // ~15 s on an idle 2-core machine (about 10 ms of CPU per refused open); generous for a loaded one.
  }, 300_000);
});

describe('snapshot files and disk storage', () => {
  const snap = (index: number, term: number, data: string) => ({
    meta: { index, term, confState: { voters: [1, 2, 3], learners: [] } },
    data: new TextEncoder().encode(data),
  });

  it('snapshots — a partial (temporary) file is ignored and removed; a damaged newest file falls back to an older one', async () => {
    const dir = freshDir();
    const s = new Snapshotter(dir, { kept: 3 });
    await s.init();
    await s.save(snap(10, 1, 'ten'));
    await s.save(snap(20, 2, 'twenty'));
    writeFileSync(join(dir, `${'0'.repeat(15)}3-${'0'.repeat(14)}1e.snap.tmp`), 'half a snapshot');
    const s2 = new Snapshotter(dir, { kept: 3 });
    await s2.init();
    expect(readdirSync(dir).some((f) => f.endsWith('.tmp'))).toBe(false);
    expect(new TextDecoder().decode((await s2.loadNewest())!.snapshot.data)).toBe('twenty');
    const newest = (await s2.list())[0]!.name;
    const b = readFileSync(join(dir, newest));
    b[b.length - 2]! ^= 0x10;
    writeFileSync(join(dir, newest), b);
    const logs: string[] = [];
    const loaded = await new Snapshotter(dir, { log: (m) => logs.push(m) }).loadNewest();
    expect(new TextDecoder().decode(loaded!.snapshot.data)).toBe('ten');
    expect(loaded!.skipped).toEqual([newest]);
    expect(logs.join()).toMatch(/checksum/);
  });

  it('disk storage — a damaged newest snapshot falls back to the older one and the WAL replays from there', async () => {
    const dataDir = await storageWithTwoSnapshots();
    const again = await DiskStorage.open({ dataDir, nodeId: 1, voters: [1], segmentBytes: 4096 });
    expect(again.snap.meta.index).toBe(40);
    expect(again.firstIndex()).toBe(41);
    expect(again.lastIndex()).toBe(60);
    await again.close();
    const newest = damageNewestSnapshot(dataDir);
    const fallback = await DiskStorage.open({ dataDir, nodeId: 1, voters: [1], segmentBytes: 4096 });
    expect(new TextDecoder().decode(fallback.snap.data)).toBe('state@20');
    expect(fallback.recovery.skippedSnapshots).toEqual([newest]);
    expect(fallback.firstIndex()).toBe(21);
    expect(fallback.lastIndex()).toBe(60);
    expect(fallback.hardState.commit).toBe(60);
    await fallback.close();
  });

  it('disk storage — a damaged newest snapshot and a torn WAL tail: the tail is repaired and reported, the WAL replayed after the older snapshot', async () => {
    const dataDir = await storageWithTwoSnapshots();
    const newest = damageNewestSnapshot(dataDir);
    // Tear the last record (the hard state after entry 60): its end marker never reached the disk.
    const walDir = join(dataDir, 'wal');
    const lastSeg = join(walDir, segFiles(walDir).at(-1)!);
    const seg = new Uint8Array(readFileSync(lastSeg));
    const scan = scanSegment(seg, lastSeg, true);
    const tornAt = scan.records.at(-1)!.offset;
    seg.fill(0, scan.end - 3, scan.end);
    writeFileSync(lastSeg, seg);
    const logs: string[] = [];
    const again = await DiskStorage.open({
      dataDir,
      nodeId: 1,
      voters: [1],
      segmentBytes: 4096,
      log: (m) => logs.push(m),
    });
    expect(new TextDecoder().decode(again.snap.data)).toBe('state@20');
    expect(again.recovery.skippedSnapshots).toEqual([newest]);
    expect(again.recovery.wal.truncated?.offset).toBe(tornAt);
    expect(logs.join('\n')).toMatch(/torn tail/);
    expect(again.firstIndex()).toBe(21);
    expect(again.lastIndex()).toBe(60);
    await again.close();
  });

  it('disk storage — a second opener of the same data directory is refused', async () => {
    const dataDir = freshDir();
    const ds = await DiskStorage.open({ dataDir, nodeId: 1, voters: [1], segmentBytes: 4096 });
    await expect(DiskStorage.open({ dataDir, nodeId: 1, voters: [1], segmentBytes: 4096 })).rejects.toThrow(
      /in use/,
    );
    await ds.close();
    const again = await DiskStorage.open({ dataDir, nodeId: 1, voters: [1], segmentBytes: 4096 });
    await again.close();
  });

  it('disk storage — a directory of another member is refused', async () => {
    const dataDir = freshDir();
    const ds = await DiskStorage.open({ dataDir, nodeId: 1, voters: [1, 2], segmentBytes: 4096 });
    await ds.close();
    await expect(
      DiskStorage.open({ dataDir, nodeId: 2, voters: [1, 2], segmentBytes: 4096 }),
    ).rejects.toThrow(/member 1/);
  });
});
