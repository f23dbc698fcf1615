import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { frame, RecordType, walFormat } from '../../backends/raft/storage/records.js';
import { Wal } from '../../backends/raft/storage/wal.js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';

const dirs: string[] = [];
afterEach(() => {
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

describe('wal format versions', () => {
  it('a segment written in another WAL format is refused with an error naming both formats and the file', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'conclave-walfmt-'));
    dirs.push(dir);
    const seg = '0000000000000000-0000000000000001.wal';
    // A format-1 segment: its Metadata says version 1, and garbage (for this build) follows.
    const meta = frame({ type: RecordType.Metadata, nodeId: 1, segment: 0, version: 1 });
    const old = new Uint8Array(8192);
    old.set(meta);
    old.set(
      frame({ type: RecordType.HardState, hardState: { term: 1, vote: 1, commit: 0 } }).subarray(0, 12),
      meta.length,
    );
    writeFileSync(join(dir, seg), old);
    const err = await Wal.open({ dir, nodeId: 1 }, 0).then(
      async ({ wal }) => {
        await wal.close();
        return undefined;
      },
      (e: unknown) => e,
    );
    expect(ConclaveError.is(err, ErrorCode.Corrupt), String(err)).toBe(true);
    const msg = (err as Error).message;
    expect(msg).toContain(`format 1`);
    expect(msg).toContain(`format ${walFormat}`);
    expect(msg).toContain(seg);
    expect(msg).toMatch(/empty directory/);
  });

  it('segments this build writes carry its format and reopen cleanly', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'conclave-walfmt-'));
    dirs.push(dir);
    const { wal } = await Wal.open({ dir, nodeId: 7 }, 0);
    await wal.save([
      { type: RecordType.Entry, entry: { term: 1, index: 1, type: 0, data: new Uint8Array([1, 2, 3]) } },
    ]);
    await wal.close();
    const { wal: again, recovery } = await Wal.open({ dir, nodeId: 7 }, 0);
    await again.close();
    expect(recovery.entries).toEqual([{ term: 1, index: 1, type: 0, data: new Uint8Array([1, 2, 3]) }]);
  });
});
