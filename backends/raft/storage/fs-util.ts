/** Small filesystem helpers for the storage layer (the only code that touches disk). */
import { constants, promises as fsp } from 'node:fs';

/** fsyncs a directory so that a rename or unlink inside it is durable. */
export async function syncDir(dir: string): Promise<void> {
  const fh = await fsp.open(dir, constants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

const zeroChunk = new Uint8Array(1 << 20);

/** Writes `bytes` zeros at `position` (preallocation, torn-tail erasure); does not sync. */
export async function writeZeros(fh: fsp.FileHandle, position: number, bytes: number): Promise<void> {
  let done = 0;
  while (done < bytes) {
    const n = Math.min(zeroChunk.length, bytes - done);
    await fh.write(zeroChunk, 0, n, position + done);
    done += n;
  }
}

/** Index of the last non-zero byte of `buf` at or after `from`, or -1. */
export function lastNonZero(buf: Uint8Array, from = 0): number {
  for (let i = buf.length - 1; i >= from; i--) if (buf[i] !== 0) return i;
  return -1;
}

export const hex16 = (n: number): string => n.toString(16).padStart(16, '0');
