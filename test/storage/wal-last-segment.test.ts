/**
 * Reading the last WAL segment (recovery time): recovery reads it only up to the first
 * all-zero piece after its data and checks that the rest is zeros without keeping it. Whatever the
 * segment holds, the outcome must be exactly that of scanning the whole file: the same entries,
 * the same torn tail repaired, the same corruption refused (file and offset). Segments of 64 KiB
 * are read in 4 KiB pieces, so the shortcut runs here.
 */
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Entry } from '../../backends/raft/consensus/types.js';
import { RecordType, type WalRecord } from '../../backends/raft/storage/records.js';
import { scanSegment, Wal } from '../../backends/raft/storage/wal.js';

const root = mkdtempSync(join(tmpdir(), 'conclave-wal-last-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = () => join(root, `d${n++}`);
const segmentBytes = 64 * 1024;

const ent = (index: number, data: Uint8Array): Entry => ({ index, term: 1, type: 0, data });
const text = (s: string) => new TextEncoder().encode(s);
const recs = (es: Entry[]): WalRecord[] => es.map((e) => ({ type: RecordType.Entry, entry: e }));
const segFiles = (dir: string) =>
  readdirSync(dir)
    .filter((f) => f.endsWith('.wal'))
    .sort();

/** What recovery does with the directory: entries, repair, or the refusal's message. */
async function outcome(dir: string): Promise<string> {
  return Wal.open({ dir, nodeId: 1, segmentBytes }, 0).then(
    async ({ wal, recovery }) => {
      await wal.close();
      const t = recovery.truncated;
      return `entries ${recovery.entries.map((e) => `${e.index}:${e.data.length}`).join(',')}${t ? ` torn ${t.offset}+${t.bytes}` : ''}`;
    },
    (err: unknown) => `refused ${(err as Error).message}`,
  );
}

/** What a scan of the whole last segment decides (the reference): refused, torn at, or clean. */
function reference(file: string): string {
  try {
    const s = scanSegment(new Uint8Array(readFileSync(file)), file, true);
    return s.tornBytes > 0 ? `torn ${s.end}+${s.tornBytes}` : 'clean';
  } catch (err) {
    return `refused ${(err as Error).message}`;
  }
}

function expectSame(got: string, ref: string, what: string): void {
  if (ref.startsWith('refused')) expect(got, what).toBe(ref);
  else if (ref.startsWith('torn')) expect(got.endsWith(ref), `${what}: ${got} vs ${ref}`).toBe(true);
  else expect(got.includes(' torn '), `${what}: ${got}`).toBe(false);
}

async function writeWal(dir: string, batches: Entry[][]): Promise<void> {
  const { wal } = await Wal.open({ dir, nodeId: 1, segmentBytes }, 0);
  for (const b of batches) await wal.save(recs(b));
  await wal.close();
}

describe('wal — the last segment read up to its data', () => {
  it('a byte anywhere in the zero rest of the last segment is refused exactly as a whole-file scan refuses it', async () => {
    for (const segments of [1, 3]) {
      const dir = freshDir();
      // `segments` 1: a fresh read buffer; 3: the last segment reuses the buffer of a full one.
      const batches: Entry[][] = [];
      let i = 1;
      // 13 entries of 5,000 bytes fill a 64 KiB segment; one more starts the last one.
      for (let k = 0; k < (segments - 1) * 13 + (segments > 1 ? 1 : 0); k++, i++)
        batches.push([ent(i, new Uint8Array(5000).fill(i & 0xff))]);
      for (let k = 0; k < 5; k++, i++) batches.push([ent(i, text(`small ${i}`))]);
      await writeWal(dir, batches);
      const files = segFiles(dir);
      expect(files.length).toBe(segments);
      const file = join(dir, files[files.length - 1]!);
      const pristine = new Uint8Array(readFileSync(file));
      expect(await outcome(dir)).toBe(
        `entries ${batches.map((b) => `${b[0]!.index}:${b[0]!.data.length}`).join(',')}`,
      );
      const dataEnd = scanSegment(pristine, file, true).end;
      const piece = Math.ceil((dataEnd + 1) / 4096) * 4096;
      const positions = [
        dataEnd,
        dataEnd + 1,
        dataEnd + 300,
        piece - 1,
        piece,
        piece + 4095,
        piece + 4096,
        30_000,
      ];
      for (const at of [...positions.filter((p) => p < segmentBytes), segmentBytes - 1]) {
        const b = new Uint8Array(pristine);
        b[at] = 0x5a;
        writeFileSync(file, b);
        const ref = reference(file);
        writeFileSync(file, b);
        expectSame(await outcome(dir), ref, `segments ${segments}, byte at ${at}`);
        writeFileSync(file, pristine);
      }
    }
  });

  it('a torn last record at every byte offset is repaired exactly as a whole-file scan decides', async () => {
    const base = freshDir();
    await writeWal(base, [
      [ent(1, text('one'))],
      [ent(2, text('two'))],
      [ent(3, text('the last record, torn'))],
    ]);
    const seg = segFiles(base)[0]!;
    const pristine = new Uint8Array(readFileSync(join(base, seg)));
    const scan = scanSegment(pristine, seg, true);
    const lastAt = scan.records[scan.records.length - 1]!.offset;
    for (let k = 0; k < scan.end - lastAt; k++) {
      const dir = freshDir();
      cpSync(base, dir, { recursive: true });
      const file = join(dir, seg);
      const b = new Uint8Array(pristine);
      b.fill(0, lastAt + k, scan.end);
      writeFileSync(file, b);
      const ref = reference(file);
      const got = await outcome(dir);
      expectSame(got, ref, `torn at +${k}`);
      expect(got.startsWith('entries 1:3,2:3'), `${k}: ${got}`).toBe(true);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('an entry of zeros longer than several read pieces, with records after it, is read whole', async () => {
    const dir = freshDir();
    const zeros = new Uint8Array(20_000);
    await writeWal(dir, [
      [ent(1, text('before'))],
      [ent(2, zeros)],
      [ent(3, text('after'))],
      [ent(4, zeros)],
    ]);
    expect(await outcome(dir)).toBe('entries 1:6,2:20000,3:5,4:20000');
    const { wal, recovery } = await Wal.open({ dir, nodeId: 1, segmentBytes }, 0);
    await wal.close();
    expect(recovery.entries[1]!.data).toEqual(zeros);
    expect(new TextDecoder().decode(recovery.entries[2]!.data)).toBe('after');
  });
});
