/**
 * The WAL's durable writes (put path): the segment being written is opened with O_DSYNC,
 * so a save's write returns once durable without a separate fdatasync — after a recovery (the
 * last segment reopened) and after every rotation (the spare reopened once renamed). Checked on
 * Linux through /proc/self/fdinfo (the open flags of every descriptor on the segment file).
 */
import {
  constants as fsConstants,
  mkdtempSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { RecordType, type WalRecord } from '../../backends/raft/storage/records.js';
import { Wal } from '../../backends/raft/storage/wal.js';

const root = mkdtempSync(join(tmpdir(), 'conclave-wal-dsync-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

/** Open flags of every descriptor of this process on `file`. */
function openFlags(file: string): number[] {
  const out: number[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    let target: string;
    try {
      target = readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      continue;
    }
    if (target !== file) continue;
    const m = /^flags:\s*([0-7]+)$/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
    if (m) out.push(Number.parseInt(m[1]!, 8));
  }
  return out;
}

const entry = (index: number): WalRecord => ({
  type: RecordType.Entry,
  entry: { index, term: 1, type: 0, data: new Uint8Array(300).fill(index & 0xff) },
});
const lastSegment = (dir: string) =>
  join(
    dir,
    readdirSync(dir)
      .filter((f) => f.endsWith('.wal'))
      .sort()
      .at(-1)!,
  );

describe.runIf(process.platform === 'linux' && fsConstants.O_DSYNC !== undefined)(
  'wal — O_DSYNC writes',
  () => {
    it('the segment being written has O_DSYNC after open, after recovery and after each rotation; saves count as syncs', async () => {
      const dir = join(root, 'd');
      const dsync = fsConstants.O_DSYNC!;
      const { wal } = await Wal.open({ dir, nodeId: 1, segmentBytes: 4096 }, 0);
      const check = () => {
        const flags = openFlags(lastSegment(dir));
        expect(flags.length).toBeGreaterThan(0);
        for (const f of flags) expect(f & dsync).toBe(dsync);
      };
      check();
      const syncs0 = wal.stats.syncs;
      for (let i = 1; i <= 40; i++) await wal.save([entry(i)]);
      expect(wal.segmentCount).toBeGreaterThan(2);
      expect(wal.stats.syncs - syncs0).toBeGreaterThanOrEqual(40);
      check();
      await wal.close();
      const { wal: again, recovery } = await Wal.open({ dir, nodeId: 1, segmentBytes: 4096 }, 0);
      expect(recovery.entries.map((e) => e.index)).toEqual(Array.from({ length: 40 }, (_, i) => i + 1));
      check();
      await again.save([entry(41)]);
      await again.close();
      expect(openFlags(lastSegment(dir))).toEqual([]);
    });
  },
);
