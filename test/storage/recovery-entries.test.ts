/**
 * WAL recovery's ownership of entry bytes (recovery time): recovery reads every segment
 * into one reused buffer and parses entries as views into it, then copies the entries the log
 * keeps — except those of the last segment when they are most of the buffer (nothing overwrites
 * it any more). The recovered entries must hold their own bytes or share only such a buffer
 * (decoded commands, and so stored values, are views into them), must be exactly what was saved
 * across segments of different sizes, and `scanSegment` used on its own (the simulator's disk
 * model mutates its bytes) must still copy.
 */
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { Entry } from '../../backends/raft/consensus/types.js';
import {
  decodePayload,
  encodePayload,
  RecordType,
  type WalRecord,
} from '../../backends/raft/storage/records.js';
import { scanSegment, Wal } from '../../backends/raft/storage/wal.js';

const root = mkdtempSync(join(tmpdir(), 'conclave-recovery-entries-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));
let n = 0;
const freshDir = () => join(root, `d${n++}`);

/** Entry `index` with `size` bytes derived from the index (so a mix-up shows). */
function ent(index: number, size: number, term = 1): Entry {
  const data = new Uint8Array(size);
  for (let i = 0; i < size; i++) data[i] = (index * 7 + i) & 0xff;
  return { index, term, type: 0, data };
}
const recs = (es: Entry[]): WalRecord[] => es.map((e) => ({ type: RecordType.Entry, entry: e }));
const walFiles = (dir: string) =>
  readdirSync(dir)
    .filter((f) => f.endsWith('.wal'))
    .sort();

/**
 * Every entry holds bytes of its own, except a suffix (the last segment's entries) that may share
 * the segment's read buffer when they make up at least half of it (wal.ts): never a buffer that
 * is mostly other data. Returns how many share it.
 */
function expectOwnBytes(entries: readonly Entry[]): number {
  let shared = 0;
  const last = entries[entries.length - 1];
  if (last && last.data.buffer.byteLength !== last.data.length) {
    const buf = last.data.buffer;
    let bytes = 0;
    for (let i = entries.length - 1; i >= 0 && entries[i]!.data.buffer === buf; i--) {
      shared++;
      bytes += entries[i]!.data.length;
    }
    expect(bytes * 2).toBeGreaterThanOrEqual(buf.byteLength);
  }
  const own = entries.slice(0, entries.length - shared);
  const buffers = new Set<ArrayBufferLike>();
  for (const e of own) {
    expect(e.data.byteOffset).toBe(0);
    expect(e.data.buffer.byteLength).toBe(e.data.length);
    buffers.add(e.data.buffer);
  }
  expect(buffers.size).toBe(own.length);
  return shared;
}

describe('wal recovery — entry bytes', () => {
  it('entries recovered from several segments hold their own bytes and equal what was saved; those the snapshot covers are dropped', async () => {
    const dir = freshDir();
    const saved: Entry[] = [];
    const { wal } = await Wal.open({ dir, nodeId: 1, segmentBytes: 8192 }, 0);
    for (let i = 1; i <= 120; i++) {
      const e = ent(i, (i * 37) % 700);
      saved.push(e);
      await wal.save([
        ...recs([e]),
        { type: RecordType.HardState, hardState: { term: 1, vote: 1, commit: i } },
      ]);
    }
    await wal.close();
    expect(walFiles(dir).length).toBeGreaterThan(5);
    for (const after of [0, 50, 119, 120]) {
      const { wal: w, recovery } = await Wal.open({ dir, nodeId: 1, segmentBytes: 8192 }, after);
      await w.close();
      expect(recovery.entries).toEqual(saved.slice(after));
      expectOwnBytes(recovery.entries);
    }
  });

  it('segments of different sizes (the read buffer grows) and an overwritten suffix in a later segment', async () => {
    const dir = freshDir();
    const a = await Wal.open({ dir, nodeId: 1, segmentBytes: 4096 }, 0);
    const first = Array.from({ length: 30 }, (_, i) => ent(i + 1, 300));
    for (const e of first) await a.wal.save(recs([e]));
    await a.wal.close();
    // Reopened with larger segments: the next segments are larger than the first ones.
    const b = await Wal.open({ dir, nodeId: 1, segmentBytes: 32768 }, 0);
    expect(b.recovery.entries).toEqual(first);
    // Overwrite from index 21 on with a newer term, across a rotation.
    const rewritten = Array.from({ length: 60 }, (_, i) => ent(21 + i, 900, 2));
    for (const e of rewritten) await b.wal.save(recs([e]));
    await b.wal.close();
    const sizes = walFiles(dir).map((f) => readFileSync(join(dir, f)).length);
    expect(new Set(sizes).size).toBeGreaterThan(1);
    const c = await Wal.open({ dir, nodeId: 1, segmentBytes: 32768 }, 0);
    await c.wal.close();
    expect(c.recovery.entries).toEqual([...first.slice(0, 20), ...rewritten]);
    expectOwnBytes(c.recovery.entries);
  });

  it("the last segment's kept entries stay views into its read buffer only when they are most of it", async () => {
    const dir = freshDir();
    const { wal } = await Wal.open({ dir, nodeId: 1, segmentBytes: 8192 }, 0);
    const saved = Array.from({ length: 14 }, (_, i) => ent(i + 1, 500));
    for (const e of saved) await wal.save(recs([e]));
    await wal.close();
    expect(walFiles(dir).length).toBe(1);
    // All 14 kept (~7 KB of an 8 KiB segment): views, not copies.
    const all = await Wal.open({ dir, nodeId: 1, segmentBytes: 8192 }, 0);
    await all.wal.close();
    expect(all.recovery.entries).toEqual(saved);
    expect(expectOwnBytes(all.recovery.entries)).toBe(14);
    // A snapshot covers 10: the 4 kept are less than half of the buffer, so they are copied.
    const few = await Wal.open({ dir, nodeId: 1, segmentBytes: 8192 }, 10);
    await few.wal.close();
    expect(few.recovery.entries).toEqual(saved.slice(10));
    expect(expectOwnBytes(few.recovery.entries)).toBe(0);
  });

  it('scanSegment copies entry bytes by default; decodePayload gives a plain view only when asked', () => {
    const e = ent(3, 50);
    const payload = encodePayload({ type: RecordType.Entry, entry: e });
    const copied = decodePayload(RecordType.Entry, payload);
    const viewed = decodePayload(RecordType.Entry, payload, 'view');
    if (copied.type !== RecordType.Entry || viewed.type !== RecordType.Entry) throw new Error('not entries');
    expect(copied.entry).toEqual(e);
    expect(viewed.entry).toEqual(e);
    expect(copied.entry.data.buffer).not.toBe(payload.buffer);
    expect(viewed.entry.data.buffer).toBe(payload.buffer);
    // Through a Buffer too: the view is a plain Uint8Array (whose slice copies).
    const asBuffer = Buffer.from(payload.buffer, payload.byteOffset, payload.length);
    const fromBuffer = decodePayload(RecordType.Entry, asBuffer, 'view');
    if (fromBuffer.type !== RecordType.Entry) throw new Error('not an entry');
    expect(Object.getPrototypeOf(fromBuffer.entry.data)).toBe(Uint8Array.prototype);
    const copiedFromBuffer = decodePayload(RecordType.Entry, asBuffer);
    if (copiedFromBuffer.type !== RecordType.Entry) throw new Error('not an entry');
    expect(copiedFromBuffer.entry).toEqual(e);
    expect(copiedFromBuffer.entry.data.buffer).not.toBe(payload.buffer);
  });

  it('scanSegment (default) on a segment whose bytes are then modified: the entries keep what was read', async () => {
    const dir = freshDir();
    const { wal } = await Wal.open({ dir, nodeId: 1, segmentBytes: 8192 }, 0);
    await wal.save(recs([ent(1, 40), ent(2, 40)]));
    await wal.close();
    const buf = new Uint8Array(readFileSync(join(dir, walFiles(dir)[0]!)));
    const scan = scanSegment(buf, 'seg', true);
    buf.fill(0xee);
    const entries = scan.records.flatMap((r) => (r.rec.type === RecordType.Entry ? [r.rec.entry] : []));
    expect(entries).toEqual([ent(1, 40), ent(2, 40)]);
  });
});
