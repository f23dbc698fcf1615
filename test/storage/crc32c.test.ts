/**
 * CRC-32C (recovery time): the WebAssembly path and the JavaScript loop against known
 * vectors and against a bit-at-a-time reference (the definition), on random buffers at random
 * offsets and lengths, across the copy-buffer boundary, and continued over split inputs.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  crc32c,
  crc32cJs,
  crc32cUsesWasm,
  wasmBytesMin,
  wasmChunkBytes,
} from '../../backends/raft/storage/crc32c.js';

/** CRC-32C one bit at a time: slow and obviously right. */
function reference(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  let c = ~crc >>> 0;
  for (let i = start; i < end; i++) {
    c ^= buf[i]!;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
  }
  return ~c >>> 0;
}

const ascii = (s: string) => new TextEncoder().encode(s);
const impls = { crc32c, crc32cJs, reference } as const;

function randomBytes(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

describe('crc32c', () => {
  it('uses WebAssembly in this Node (the fast path is the one under test)', () => {
    expect(crc32cUsesWasm).toBe(true);
  });

  for (const [name, f] of Object.entries(impls))
    it(`${name}: known vectors (the check value and RFC 3720's iSCSI vectors)`, () => {
      expect(f(ascii('123456789'))).toBe(0xe3069283);
      expect(f(new Uint8Array(0))).toBe(0);
      expect(f(new Uint8Array(32))).toBe(0x8a9136aa);
      expect(f(new Uint8Array(32).fill(0xff))).toBe(0x62a8ab43);
      expect(f(Uint8Array.from({ length: 32 }, (_, i) => i))).toBe(0x46dd794e);
      expect(f(Uint8Array.from({ length: 32 }, (_, i) => 31 - i))).toBe(0x113fdb5c);
      // Long enough for the WebAssembly path (both loops of its function).
      expect(f(ascii('123456789'.repeat(20)))).toBe(reference(ascii('123456789'.repeat(20))));
    });

  it('agrees with the reference on random buffers at random offsets and lengths', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ minLength: 0, maxLength: 3000 }),
        fc.nat(),
        fc.nat(),
        fc.nat({ max: 0xffff_ffff }),
        (buf, a, b, prev) => {
          const start = buf.length === 0 ? 0 : a % (buf.length + 1);
          const end = start + (b % (buf.length - start + 1));
          const want = reference(buf, prev, start, end);
          expect(crc32c(buf, prev, start, end)).toBe(want);
          expect(crc32cJs(buf, prev, start, end)).toBe(want);
        },
      ),
      { numRuns: 2000 },
    );
  });

  it('agrees on views at every alignment, around the WebAssembly threshold', () => {
    const backing = randomBytes(4096, 7);
    for (let off = 0; off < 8; off++)
      for (let len = wasmBytesMin - 20; len < wasmBytesMin + 40; len++) {
        const view = backing.subarray(off, off + len);
        expect(crc32c(view)).toBe(reference(view));
        expect(crc32c(Buffer.from(view.buffer, view.byteOffset, len))).toBe(reference(view));
      }
  });

  it('agrees across the copy-buffer boundary (inputs longer than one WebAssembly call)', () => {
    const big = randomBytes(3 * wasmChunkBytes + 1234, 11);
    const want = reference(big);
    expect(crc32c(big)).toBe(want);
    expect(crc32cJs(big)).toBe(want);
    for (const [s, e] of [
      [1, wasmChunkBytes + 1],
      [wasmChunkBytes - 3, 2 * wasmChunkBytes + 5],
      [17, big.length - 3],
    ] as const)
      expect(crc32c(big, 0, s, e)).toBe(reference(big, 0, s, e));
  });

  it('continues over split inputs: crc(a ++ b) = crc(b, crc(a))', () => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), fc.uint8Array({ maxLength: 600 }), (a, b) => {
        const ab = new Uint8Array(a.length + b.length);
        ab.set(a);
        ab.set(b, a.length);
        expect(crc32c(b, crc32c(a))).toBe(crc32c(ab));
        expect(crc32c(ab, crc32c(ab, 0, 0, a.length), a.length)).toBe(reference(ab));
      }),
      { numRuns: 500 },
    );
  });
});
