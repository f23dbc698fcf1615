/**
 * Accepts an HTTP/2 `:authority` that Node's HTTP/2 library refuses but etcd accepts.
 *
 * etcd's Go client dials one member directly for Maintenance calls (`etcdctl defrag`, `endpoint
 * hashkv`, `move-leader`, clientv3's `Status`/`HashKV`) through grpc's `passthrough:///<endpoint>`
 * target, so with an endpoint written `http://host:port` its requests carry
 * `:authority: http://host:port`. Go's HTTP/2 server (etcd) accepts that; nghttp2, under Node's
 * HTTP/2 server, validates `:authority` and `host` against RFC 3986's authority characters and
 * resets the stream with PROTOCOL_ERROR, which Node gives no option to turn off. The Go client
 * then fails with "stream terminated by RST_STREAM with error code: PROTOCOL_ERROR".
 *
 * What this does, per HTTP/2 connection, before Node's session sees any byte:
 * 1. After the client's connection preface it sends the server's first SETTINGS frame itself
 *    (empty: the defaults; RFC 9113 §3.4 — grpc-go sends its first request only after the
 *    server's SETTINGS), and removes the client's ACK of it from what Node will read, so Node's
 *    own SETTINGS (sent when it takes the connection) is simply a second SETTINGS (§6.5).
 * 2. It reads the first request's header block (HPACK, RFC 7541): when its `:authority` (or
 *    `host`) is acceptable — every client but the one above — the socket goes to Node as it is
 *    (native, no copy). Only when it is not, the connection runs through a rewriter that replaces
 *    each such value with one of the same length whose other characters are `_` (same length, so
 *    the client's and the server's HPACK dynamic tables keep the same sizes and indexes).
 * A connection whose first request does not come within `firstRequestWaitMs` of the ACK (an idle
 * channel) goes to Node as it is.
 *
 * Bounds: bytes held while deciding (`heldBytesMax`), one header block (`headerBlockBytesMax`,
 * larger ones pass unchanged), the HPACK table (what the client's encoder may use, at most
 * `hpackTableBytesMax`).
 */
import type * as net from 'node:net';
import { Duplex } from 'node:stream';
import { http2Preface } from './listener.js';

/** Bytes read from a connection while deciding; beyond, it goes to Node as it is. */
export const heldBytesMax = 256 * 1024;
/** Longest wait for the client's ACK of the first SETTINGS before the connection is closed. */
export const settingsAckWaitMs = 10_000;
/** After the ACK: how long an idle connection waits for its first request before going to Node. */
export const firstRequestWaitMs = 2_000;
/** One header block (HEADERS + CONTINUATION) rewritten at most; larger ones pass unchanged. */
export const headerBlockBytesMax = 64 * 1024;
/** The HPACK dynamic table tracked at most (Node advertises 4096 bytes, the protocol default). */
export const hpackTableBytesMax = 64 * 1024;

const FRAME_HEADERS = 1;
const FRAME_SETTINGS = 4;
const FRAME_CONTINUATION = 9;
const FLAG_ACK = 0x1;
const FLAG_END_STREAM = 0x1;
const FLAG_END_HEADERS = 0x4;
const FLAG_PADDED = 0x8;
const FLAG_PRIORITY = 0x20;
/** SETTINGS_MAX_FRAME_SIZE's default, which Node keeps: rewritten frames are split to fit. */
const maxFramePayload = 16_384;
const emptySettings = Buffer.from([0, 0, 0, FRAME_SETTINGS, 0, 0, 0, 0, 0]);

// --- HPACK (RFC 7541) -------------------------------------------------------------------------

/** Names of the static table (RFC 7541 Appendix A), index 1..61. */
const staticNames = [
  ':authority',
  ':method',
  ':method',
  ':path',
  ':path',
  ':scheme',
  ':scheme',
  ':status',
  ':status',
  ':status',
  ':status',
  ':status',
  ':status',
  ':status',
  'accept-charset',
  'accept-encoding',
  'accept-language',
  'accept-ranges',
  'accept',
  'access-control-allow-origin',
  'age',
  'allow',
  'authorization',
  'cache-control',
  'content-disposition',
  'content-encoding',
  'content-language',
  'content-length',
  'content-location',
  'content-range',
  'content-type',
  'cookie',
  'date',
  'etag',
  'expect',
  'expires',
  'from',
  'host',
  'if-match',
  'if-modified-since',
  'if-none-match',
  'if-range',
  'if-unmodified-since',
  'last-modified',
  'link',
  'location',
  'max-forwards',
  'proxy-authenticate',
  'proxy-authorization',
  'range',
  'referer',
  'refresh',
  'retry-after',
  'server',
  'set-cookie',
  'strict-transport-security',
  'transfer-encoding',
  'user-agent',
  'vary',
  'via',
  'www-authenticate',
];

/**
 * The Huffman code's lengths for symbols 0..255 (RFC 7541 Appendix B), one letter each
 * ('A' = 5 bits … 'Z' = 30 bits). The code is canonical (codes of one length are consecutive,
 * in symbol order), so the lengths define it; EOS (256) is the 30-bit all-ones code.
 */
const huffmanLengths =
  'ISXXXXXXXTZXXZXXXXXXXXZXXXXXXXXXBFFHIBDGFFDGDBBBAAABBBBBBBCDKBHFIBCCCCCCCCCCCCCCCCCCCCCCDCDIOIJBKABABABBBACCBBBABCBAABCCCCCKGJIXPRPPRRRSRSSSSSTSTTRSTSSSSQRSRSSTRQPRRSSQSRRTQRSSQQRQSRSSPRRRSRRSVVPORSRUVVVWWVTUOQVWWVWTQQVVXWWWPTPQRQQSRRUUTTVSVWVVWWWWWXWWWWWV';

/** Canonical decoding tables: per length, the first code, how many, and where its symbols start. */
const huffman = (() => {
  const lens = [...huffmanLengths].map((c) => c.charCodeAt(0) - 65 + 5);
  const symbols = [...lens.keys()].sort((a, b) => lens[a]! - lens[b]! || a - b);
  const first = new Array<number>(31).fill(0);
  const count = new Array<number>(31).fill(0);
  const start = new Array<number>(31).fill(0);
  for (const s of symbols) count[lens[s]!]!++;
  let code = 0;
  let at = 0;
  for (let len = 1; len <= 30; len++) {
    first[len] = code;
    start[len] = at;
    code = (code + count[len]!) * 2;
    at += count[len]!;
  }
  return { symbols, first, count, start };
})();

function huffmanDecode(b: Uint8Array): Buffer {
  const out: number[] = [];
  let code = 0;
  let len = 0;
  for (const byte of b) {
    for (let bit = 7; bit >= 0; bit--) {
      code = code * 2 + ((byte >> bit) & 1);
      len++;
      const off = code - huffman.first[len]!;
      if (len >= 5 && off >= 0 && off < huffman.count[len]!) {
        out.push(huffman.symbols[huffman.start[len]! + off]!);
        code = 0;
        len = 0;
      } else if (len >= 30) throw new Error('bad Huffman code');
    }
  }
  // Padding: at most 7 bits, the most significant bits of EOS (all ones).
  if (len > 7 || code !== 2 ** len - 1) throw new Error('bad Huffman padding');
  return Buffer.from(out);
}

class HpackError extends Error {}

/** Reads an HPACK integer with an n-bit prefix at `b[at]`; returns [value, next offset]. */
function readInt(b: Buffer, at: number, n: number): [number, number] {
  if (at >= b.length) throw new HpackError('truncated integer');
  const max = 2 ** n - 1;
  let v = b[at]! & max;
  at++;
  if (v < max) return [v, at];
  let shift = 0;
  for (;;) {
    if (at >= b.length || shift > 28) throw new HpackError('bad integer');
    const c = b[at++]!;
    v += (c & 0x7f) * 2 ** shift;
    shift += 7;
    if ((c & 0x80) === 0) return [v, at];
  }
}

/** Reads an HPACK string literal at `b[at]`; returns [text, next offset]. */
function readString(b: Buffer, at: number): [string, number] {
  if (at >= b.length) throw new HpackError('truncated string');
  const huff = (b[at]! & 0x80) !== 0;
  const [len, from] = readInt(b, at, 7);
  if (from + len > b.length) throw new HpackError('truncated string');
  const raw = b.subarray(from, from + len);
  return [(huff ? huffmanDecode(raw) : raw).toString('latin1'), from + len];
}

function writeInt(v: number, n: number, firstBits: number): Buffer {
  const max = 2 ** n - 1;
  if (v < max) return Buffer.from([firstBits | v]);
  const out = [firstBits | max];
  v -= max;
  while (v >= 128) {
    out.push((v % 128) + 128);
    v = Math.floor(v / 128);
  }
  out.push(v);
  return Buffer.from(out);
}

/** nghttp2's check_authority: RFC 3986 authority characters (unreserved, sub-delims, ":@[]%"). */
const authorityOk = /^[A-Za-z0-9\-._~!$&'()*+,;=:@[\]%]*$/;

/** The value with every character nghttp2 refuses replaced by '_' (same length). */
export function saneAuthority(v: string): string {
  return authorityOk.test(v) ? v : v.replace(/[^A-Za-z0-9\-._~!$&'()*+,;=:@[\]%]/g, '_');
}

/** The decoder's view of the client's HPACK dynamic table: names and values, newest first. */
export class HpackTable {
  #entries: Array<{ name: string; value: string }> = [];
  #size = 0;
  #max = 4096;

  lookup(i: number): { name: string; value: string } {
    if (i >= 1 && i <= staticNames.length) return { name: staticNames[i - 1]!, value: '' };
    const e = this.#entries[i - staticNames.length - 1];
    if (!e) throw new HpackError(`bad index ${i}`);
    return e;
  }

  insert(name: string, value: string): void {
    this.#entries.unshift({ name, value });
    this.#size += name.length + value.length + 32;
    this.#evict();
  }

  resize(max: number): void {
    if (max > hpackTableBytesMax) throw new HpackError('table size beyond bound');
    this.#max = max;
    this.#evict();
  }

  #evict(): void {
    while (this.#size > this.#max) {
      const e = this.#entries.pop()!;
      this.#size -= e.name.length + e.value.length + 32;
    }
  }
}

const isAuthorityName = (n: string) => n === ':authority' || n === 'host';

/**
 * Decodes one header block against `table` (updating it as the server's decoder will) and
 * returns it with every unacceptable `:authority`/`host` literal replaced (same length), and
 * whether anything was replaced. Throws HpackError on a malformed block (left to Node to refuse).
 */
export function rewriteHeaderBlock(block: Buffer, table: HpackTable): { block: Buffer; changed: boolean } {
  const parts: Buffer[] = [];
  let changed = false;
  let at = 0;
  while (at < block.length) {
    const start = at;
    const b = block[at]!;
    if (b & 0x80) {
      [, at] = readInt(block, at, 7); // indexed: refers to an entry already made acceptable
      parts.push(block.subarray(start, at));
      continue;
    }
    if ((b & 0xe0) === 0x20) {
      let max: number;
      [max, at] = readInt(block, at, 5);
      table.resize(max);
      parts.push(block.subarray(start, at));
      continue;
    }
    const indexing = (b & 0xc0) === 0x40;
    let nameIndex: number;
    [nameIndex, at] = readInt(block, at, indexing ? 6 : 4);
    let name: string;
    if (nameIndex === 0) [name, at] = readString(block, at);
    else name = table.lookup(nameIndex).name;
    const valueAt = at;
    let value: string;
    [value, at] = readString(block, at);
    const sane = isAuthorityName(name) ? saneAuthority(value) : value;
    if (indexing) table.insert(name, sane);
    if (sane === value) parts.push(block.subarray(start, at));
    else {
      changed = true;
      parts.push(block.subarray(start, valueAt), writeInt(sane.length, 7, 0), Buffer.from(sane, 'latin1'));
    }
  }
  return { block: changed ? Buffer.concat(parts) : block, changed };
}

// --- frames -----------------------------------------------------------------------------------

interface Frame {
  readonly type: number;
  readonly flags: number;
  readonly stream: number;
  readonly payload: Buffer;
  readonly raw: Buffer;
}

/** Splits complete frames off `buf` from `at`; returns them and where the incomplete rest starts. */
function frames(buf: Buffer, at: number): { list: Frame[]; rest: number } {
  const list: Frame[] = [];
  while (buf.length - at >= 9) {
    const len = buf.readUIntBE(at, 3);
    if (buf.length - at < 9 + len) break;
    list.push({
      type: buf[at + 3]!,
      flags: buf[at + 4]!,
      stream: buf.readUInt32BE(at + 5) & 0x7fffffff,
      payload: buf.subarray(at + 9, at + 9 + len),
      raw: buf.subarray(at, at + 9 + len),
    });
    at += 9 + len;
  }
  return { list, rest: at };
}

function frameBytes(type: number, flags: number, stream: number, payload: Buffer): Buffer {
  const h = Buffer.alloc(9);
  h.writeUIntBE(payload.length, 0, 3);
  h[3] = type;
  h[4] = flags;
  h.writeUInt32BE(stream, 5);
  return Buffer.concat([h, payload]);
}

/** A HEADERS frame's header block fragment and priority fields (padding dropped). */
function headersParts(f: Frame): { fragment: Buffer; priority: Buffer | undefined } {
  let p = f.payload;
  if (f.flags & FLAG_PADDED) {
    const pad = p[0] ?? 0;
    p = p.subarray(1, Math.max(1, p.length - pad));
  }
  if (f.flags & FLAG_PRIORITY) return { fragment: p.subarray(5), priority: p.subarray(0, 5) };
  return { fragment: p, priority: undefined };
}

/**
 * The client-to-server half of a rewritten connection: whole frames in, the same frames out,
 * except header blocks whose unacceptable authority values are replaced (HEADERS re-emitted
 * unpadded, with CONTINUATIONs when the block outgrows one frame).
 */
export class AuthorityRewriter {
  readonly #table = new HpackTable();
  #buf: Buffer = Buffer.alloc(0);
  /** A header block still waiting for its CONTINUATION frames. */
  #open: { first: Frame; fragments: Buffer[]; bytes: number } | undefined;

  /** Feeds bytes (after the preface); returns the bytes to pass on. */
  feed(chunk: Buffer): Buffer {
    this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
    const { list, rest } = frames(this.#buf, 0);
    this.#buf = this.#buf.subarray(rest);
    const out: Buffer[] = [];
    for (const f of list) {
      const open = this.#open;
      if (open && f.type === FRAME_CONTINUATION) {
        open.fragments.push(f.payload);
        open.bytes += f.payload.length;
        if (f.flags & FLAG_END_HEADERS) {
          this.#open = undefined;
          out.push(...this.#block(open.first, open.fragments));
        } else if (open.bytes > headerBlockBytesMax) {
          throw new HpackError('header block beyond headerBlockBytesMax');
        }
      } else if (f.type === FRAME_HEADERS) {
        if (f.flags & FLAG_END_HEADERS) out.push(...this.#block(f, []));
        else this.#open = { first: f, fragments: [], bytes: f.payload.length };
      } else out.push(f.raw);
    }
    return out.length === 1 ? out[0]! : Buffer.concat(out);
  }

  #block(first: Frame, more: Buffer[]): Buffer[] {
    const { fragment, priority } = headersParts(first);
    const whole = more.length === 0 ? fragment : Buffer.concat([fragment, ...more]);
    const { block } = rewriteHeaderBlock(whole, this.#table);
    const out: Buffer[] = [];
    const head = priority ? Buffer.concat([priority, block]) : block;
    const flags = (first.flags & FLAG_END_STREAM) | (priority ? FLAG_PRIORITY : 0);
    if (head.length <= maxFramePayload) {
      out.push(frameBytes(FRAME_HEADERS, flags | FLAG_END_HEADERS, first.stream, head));
      return out;
    }
    out.push(frameBytes(FRAME_HEADERS, flags, first.stream, head.subarray(0, maxFramePayload)));
    for (let at = maxFramePayload; at < head.length; at += maxFramePayload) {
      const end = Math.min(head.length, at + maxFramePayload);
      const last = end === head.length ? FLAG_END_HEADERS : 0;
      out.push(frameBytes(FRAME_CONTINUATION, last, first.stream, head.subarray(at, end)));
    }
    return out;
  }
}

/** A duplex over `socket` whose incoming bytes pass through an AuthorityRewriter. */
function rewritten(socket: net.Socket, preface: Buffer, rest: Buffer): Duplex {
  const rw = new AuthorityRewriter();
  const d = new Duplex({
    read() {
      socket.resume();
    },
    write(chunk: Buffer, _enc, cb) {
      socket.write(chunk, cb);
    },
    final(cb) {
      socket.end();
      cb();
    },
    destroy(err, cb) {
      socket.destroy(err ?? undefined);
      cb(err);
    },
  });
  const push = (b: Buffer): void => {
    let out: Buffer;
    try {
      out = rw.feed(b);
    } catch {
      // Malformed HPACK or frames: what Node would refuse with a connection error.
      socket.destroy();
      return;
    }
    if (out.length > 0 && !d.push(out)) socket.pause();
  };
  d.push(preface);
  push(rest);
  socket.on('data', push);
  socket.on('end', () => d.push(null));
  socket.on('close', () => d.destroy());
  socket.on('error', (err) => d.destroy(err));
  socket.resume();
  return d;
}

/**
 * Wraps the HTTP/2 sink of the client listener (listener.ts): connections go to `native` (the
 * socket itself) unless their first request carries an `:authority` Node would refuse; those go
 * to `proxied` as a rewriting duplex.
 */
export function acceptEtcdAuthority(
  native: (socket: net.Socket, head: Buffer) => void,
  proxied: (connection: Duplex) => void,
): (socket: net.Socket, head: Buffer) => void {
  return (socket, head) => {
    let held: Buffer = head;
    let wroteSettings = false;
    let acked = false;
    /** Offset in `held` up to which frames have been looked at (after the preface). */
    let scanned = http2Preface.length;
    let firstRequest: 'fine' | 'rewrite' | undefined;
    let timer: NodeJS.Timeout | undefined;
    let idleArmed = false;
    let finished = false;

    const finish = (how: 'native' | 'rewrite' | 'close'): void => {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      socket.pause();
      if (how === 'close') socket.destroy();
      else if (how === 'native') native(socket, held);
      else
        proxied(rewritten(socket, held.subarray(0, http2Preface.length), held.subarray(http2Preface.length)));
    };
    const wait = (ms: number, then: () => void): void => {
      clearTimeout(timer);
      timer = setTimeout(then, ms);
      timer.unref?.();
    };
    const decide = (): void => {
      if (finished) return;
      if (!wroteSettings) {
        if (held.length < http2Preface.length) return;
        if (held.compare(http2Preface, 0, http2Preface.length, 0, http2Preface.length) !== 0) {
          finish('native'); // not HTTP/2 after all: Node refuses it as it always did
          return;
        }
        socket.write(emptySettings);
        wroteSettings = true;
        wait(settingsAckWaitMs, () => finish('close'));
      }
      const { list, rest } = frames(held, scanned);
      for (const f of list) {
        if (!acked && f.type === FRAME_SETTINGS && f.flags & FLAG_ACK) {
          // The ACK of our SETTINGS: Node never sent it, so Node must not see its ACK.
          const at = f.raw.byteOffset - held.byteOffset;
          held = Buffer.concat([held.subarray(0, at), held.subarray(at + f.raw.length)]);
          acked = true;
          decide();
          return;
        }
        if (firstRequest === undefined && f.type === FRAME_HEADERS) {
          firstRequest = 'fine';
          if (f.flags & FLAG_END_HEADERS) {
            try {
              if (rewriteHeaderBlock(headersParts(f).fragment, new HpackTable()).changed)
                firstRequest = 'rewrite';
            } catch {
              // malformed: Node will say so
            }
          }
        }
      }
      scanned = rest;
      if (acked && firstRequest !== undefined) finish(firstRequest === 'rewrite' ? 'rewrite' : 'native');
      else if (held.length > heldBytesMax) finish(acked ? 'native' : 'close');
      else if (acked && !idleArmed) {
        idleArmed = true;
        wait(firstRequestWaitMs, () => finish('native'));
      }
    };
    const onData = (chunk: Buffer): void => {
      held = held.length === 0 ? chunk : Buffer.concat([held, chunk]);
      decide();
    };
    const onError = (): void => finish('close');
    const onClose = (): void => {
      finished = true;
      clearTimeout(timer);
    };
    socket.on('data', onData);
    socket.on('error', onError);
    socket.on('close', onClose);
    socket.resume();
    decide();
  };
}
