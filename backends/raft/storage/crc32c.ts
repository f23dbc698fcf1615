/**
 * CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), table-driven. Used for WAL records and
 * snapshot files; check value of "123456789" is 0xE3069283.
 *
 * Two implementations of the same function, both "slicing" table lookups:
 * - Inputs of `wasmBytesMin` bytes or more go through a small WebAssembly function generated
 *   below (slicing by 16: four 32-bit loads and sixteen table loads per 16 bytes), fed through a
 *   copy buffer in its memory, `wasmChunkBytes` at a time. Recovery checks every byte of the
 *   snapshot file and of the WAL, hundreds of MB for a million keys: this runs at ~2× the
 *   JavaScript loop (~1.6 vs ~0.8 GiB/s on the 2-vCPU dev machine, under load), copy included.
 * - Shorter inputs, and every input where WebAssembly is unavailable (`node --jitless`), go
 *   through the JavaScript loop (slicing by 8, byte loads), which needs no copy.
 * `crc32cJs` is the JavaScript loop alone (tests check that both agree).
 */
const POLY = 0x82f63b78;

/** Inputs at least this long go through WebAssembly (below it the call and the copy cost more). */
export const wasmBytesMin = 64;

/** Tables 0..15: `tables[k][n]` is the CRC register after byte n followed by k zero bytes. */
const tables: Uint32Array = (() => {
  const t = new Uint32Array(16 * 256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[n] = c >>> 0;
  }
  for (let n = 0; n < 256; n++) {
    let c = t[n]!;
    for (let k = 1; k < 16; k++) {
      c = (c >>> 8) ^ t[c & 0xff]!;
      t[k * 256 + n] = c >>> 0;
    }
  }
  return t;
})();

const [t0, t1, t2, t3, t4, t5, t6, t7] = Array.from({ length: 8 }, (_, k) =>
  tables.subarray(k * 256, k * 256 + 256),
) as [Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array, Uint32Array];

/** Continues a CRC-32C over `buf[start, end)` in JavaScript (slicing by 8); `crc` as in `crc32c`. */
export function crc32cJs(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  return ~jsRegister(buf, ~crc, start, end) >>> 0;
}

/** The loop on the raw (inverted) CRC register. */
function jsRegister(buf: Uint8Array, c: number, start: number, end: number): number {
  let i = start;
  for (; i + 8 <= end; i += 8) {
    const a = c ^ (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24));
    c =
      t7[a & 0xff]! ^
      t6[(a >>> 8) & 0xff]! ^
      t5[(a >>> 16) & 0xff]! ^
      t4[a >>> 24]! ^
      t3[buf[i + 4]!]! ^
      t2[buf[i + 5]!]! ^
      t1[buf[i + 6]!]! ^
      t0[buf[i + 7]!]!;
  }
  for (; i < end; i++) c = (c >>> 8) ^ t0[(c ^ buf[i]!) & 0xff]!;
  return c;
}

// ---------------------------------------------------------------------------------------------
// The WebAssembly function, written out as bytecode here (no toolchain, no binary blob).
//
// Memory (2 pages, 128 KiB): the sixteen tables at [0, 16 KiB) (table k at k × 1 KiB, read with
// the load's constant offset), the copy buffer at [16 KiB, 128 KiB).
//
//   (func $crc (param $c i32) (param $p i32) (param $n i32) (result i32)
//     (local $a i32) (local $b i32) (local $d i32) (local $e i32)
//     block loop                             ;; 16 bytes per turn
//       (br_if 1 (i32.lt_u $n 16))
//       $a = $c ^ load($p); $b = load($p+4); $d = load($p+8); $e = load($p+12)
//       $c = T15[a0] ^ T14[a1] ^ T13[a2] ^ T12[a3] ^ T11[b0] ^ … ^ T0[e3]
//       $p += 16; $n -= 16; br 0
//     end end
//     block loop                             ;; the last 0..15 bytes
//       (br_if 1 (i32.eqz $n))
//       $c = ($c >>> 8) ^ T0[($c ^ load8_u($p)) & 0xff]
//       $p += 1; $n -= 1; br 0
//     end end
//     $c)
//
// `$c` is the inverted register, as in `jsRegister`. Word loads are little-endian (WebAssembly
// always is), matching the byte order the tables assume.

const wasmTablesBytes = 16 * 1024;
const wasmPages = 2;
/** The copy buffer's size: the most bytes one call of the WebAssembly function checks. */
export const wasmChunkBytes = wasmPages * 65536 - wasmTablesBytes;

function uleb(v: number): number[] {
  const out: number[] = [];
  do {
    let b = v & 0x7f;
    v >>>= 7;
    if (v !== 0) b |= 0x80;
    out.push(b);
  } while (v !== 0);
  return out;
}

function sleb(v: number): number[] {
  const out: number[] = [];
  for (;;) {
    const b = v & 0x7f;
    v >>= 7;
    if ((v === 0 && (b & 0x40) === 0) || (v === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

function wasmModuleBytes(): Uint8Array {
  const [C, P, N, A, B, D, E] = [0, 1, 2, 3, 4, 5, 6];
  const get = (i: number) => [0x20, i];
  const set = (i: number) => [0x21, i];
  const i32 = (v: number) => [0x41, ...sleb(v | 0)];
  const load = (offset: number) => [0x28, 2, ...uleb(offset)];
  const [xor, and, shl, shrU, add, sub, ltU, eqz] = [0x73, 0x71, 0x74, 0x76, 0x6a, 0x6b, 0x49, 0x45];
  const [block, loop, br, brIf, end, load8U] = [0x02, 0x03, 0x0c, 0x0d, 0x0b, 0x2d];
  // tables[table][(word >>> shift) & 0xff], as a byte offset: ((word >>> (shift - 2)) & 0x3fc).
  const lookup = (local: number, shift: number, table: number) => [
    ...get(local),
    ...(shift === 0 ? [...i32(2), shl] : [...i32(shift - 2), shrU]),
    ...i32(0x3fc),
    and,
    ...load(table * 1024),
  ];
  const sixteen: number[] = [];
  [A, B, D, E].forEach((w, wi) => {
    for (let byte = 0; byte < 4; byte++) {
      sixteen.push(...lookup(w, byte * 8, 15 - (wi * 4 + byte)));
      if (wi + byte > 0) sixteen.push(xor);
    }
  });
  const body = [
    ...[block, 0x40, loop, 0x40],
    ...[...get(N), ...i32(16), ltU, brIf, 1],
    ...[...get(C), ...get(P), ...load(0), xor, ...set(A)],
    ...[...get(P), ...load(4), ...set(B)],
    ...[...get(P), ...load(8), ...set(D)],
    ...[...get(P), ...load(12), ...set(E)],
    ...sixteen,
    ...set(C),
    ...[...get(P), ...i32(16), add, ...set(P), ...get(N), ...i32(16), sub, ...set(N)],
    ...[br, 0, end, end],
    ...[block, 0x40, loop, 0x40],
    ...[...get(N), eqz, brIf, 1],
    ...[...get(C), ...i32(8), shrU],
    ...[...get(C), ...get(P), load8U, 0, 0, xor, ...i32(0xff), and],
    ...[...i32(2), shl, ...load(0), xor, ...set(C)],
    ...[...get(P), ...i32(1), add, ...set(P), ...get(N), ...i32(1), sub, ...set(N)],
    ...[br, 0, end, end],
    ...[...get(C), end],
  ];
  const fn = [...uleb(1), 4, 0x7f, ...body]; // one local group: four i32
  const section = (id: number, items: number[][]) => {
    const content = [...uleb(items.length), ...items.flat()];
    return [id, ...uleb(content.length), ...content];
  };
  const name = (s: string) => [...uleb(s.length), ...[...s].map((ch) => ch.charCodeAt(0))];
  return new Uint8Array([
    ...[0x00, 0x61, 0x73, 0x6d, 1, 0, 0, 0],
    ...section(1, [[0x60, 3, 0x7f, 0x7f, 0x7f, 1, 0x7f]]), // type: (i32 i32 i32) -> i32
    ...section(3, [[0]]), // function 0 has type 0
    ...section(5, [[0x00, wasmPages]]), // memory: min pages, no max
    ...section(7, [
      [...name('crc'), 0x00, 0],
      [...name('memory'), 0x02, 0],
    ]),
    ...section(10, [[...uleb(fn.length), ...fn]]),
  ]);
}

interface WasmCrc {
  run: (c: number, p: number, n: number) => number;
  mem: Uint8Array;
}

/** The part of the WebAssembly API used here (this project's TypeScript libs do not declare it). */
interface WasmApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports: object) => { exports: Record<string, unknown> };
}

/** The compiled function, or undefined where WebAssembly is unavailable or refuses the module. */
const wasm: WasmCrc | undefined = (() => {
  const api = (globalThis as { WebAssembly?: WasmApi }).WebAssembly;
  if (api === undefined) return undefined;
  try {
    const inst = new api.Instance(new api.Module(wasmModuleBytes()), {});
    const memory = inst.exports.memory as { buffer: ArrayBuffer };
    // The memory never grows, so this view stays valid.
    const mem = new Uint8Array(memory.buffer);
    new Uint32Array(memory.buffer, 0, tables.length).set(tables);
    return { run: inst.exports.crc as WasmCrc['run'], mem };
  } catch {
    return undefined;
  }
})();

/** Whether `crc32c` uses WebAssembly for long inputs in this process. */
export const crc32cUsesWasm = wasm !== undefined;

/** Continues a CRC-32C over `buf[start, end)`; pass the previous result as `crc` (0 to start). */
export function crc32c(buf: Uint8Array, crc = 0, start = 0, end = buf.length): number {
  let c = ~crc;
  if (wasm === undefined || end - start < wasmBytesMin) return ~jsRegister(buf, c, start, end) >>> 0;
  const { run, mem } = wasm;
  for (let i = start; i < end; ) {
    const n = Math.min(wasmChunkBytes, end - i);
    mem.set(buf.subarray(i, i + n), wasmTablesBytes);
    c = run(c, wasmTablesBytes, n);
    i += n;
  }
  return ~c >>> 0;
}
