/**
 * WorkQueue key layout and state records (see recipes/work-queue.ts and docs/recipes/work-queue.md).
 *
 *   <name>/items/<id>                   the item's body, written once by `add` and never rewritten
 *   <name>/ready/<priority 5>/<id>      state record: claimable now
 *   <name>/delayed/<due ms 13>/<id>     state record: claimable from the due time (client clock)
 *   <name>/inflight/rec/<id>            state record of a claim (no lease)
 *   <name>/inflight/lease/<id>          empty, bound to the claim's lease (visibility timeout)
 *   <name>/dead/<id>                    state record with the last error: dead letter
 *
 * Invariant: an item whose body exists has exactly one state key among ready, delayed, inflight/rec
 * and dead. Every transition is one txn that deletes the old state key (guarded by its mod
 * revision) and puts the new one, so the invariant holds at every revision. The small state record
 * travels with the item from key to key; the body is never copied.
 *
 * Ids are `<enqueue time, ms, 13 digits>-<per-process sequence>-<random>`: unique, free of `/`,
 * and ordered by enqueue time, so a priority's ready keys sort FIFO (exactly for one producer,
 * as far as the clocks agree across producers).
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { prefixEnd, toBytes, toText } from '../../src/keys.js';

/** Highest priority number (lowest urgency); priorities are 0…65535, lower is served first (etcd Go's PriorityQueue). */
export const workQueuePriorityMax = 65_535;
/** Longest stored error message (bytes of UTF-8, roughly): longer ones are cut. */
export const workQueueErrorCharsMax = 1024;
/** Largest due time we can write in 13 digits of milliseconds (year 2286). */
const dueMsMax = 9_999_999_999_999;

/** The state record carried by ready, delayed, in-flight and dead keys (short names: it is stored per transition). */
export interface StateRecord {
  /** Priority. */
  readonly p: number;
  /** Deliveries so far (claims). */
  readonly a: number;
  /** Max deliveries before dead-lettering, fixed when the item was added. */
  readonly m: number;
  /** Last error (from a nack, a dead-letter call or an expired claim). */
  readonly e?: string;
  /** Consumer (session lease hex) of the current or last claim. */
  readonly c?: string;
  /** Client time (ms) of the last transition into this state. */
  readonly t?: number;
}

export function encodeRecord(r: StateRecord): string {
  return JSON.stringify(r);
}

/** Decodes a state record; a record that is not ours fails `corrupt` naming the key. */
export function decodeRecord(key: Uint8Array, value: Uint8Array): StateRecord {
  let r: unknown;
  try {
    r = JSON.parse(toText(value));
  } catch (err) {
    throw corrupt(key, err);
  }
  const o = r as Partial<StateRecord> | null;
  if (
    typeof o !== 'object' ||
    o === null ||
    !Number.isSafeInteger(o.p) ||
    !Number.isSafeInteger(o.a) ||
    !Number.isSafeInteger(o.m)
  )
    throw corrupt(key);
  return o as StateRecord;
}

function corrupt(key: Uint8Array, cause?: unknown): ConclaveError {
  return new ConclaveError(
    ErrorCode.Corrupt,
    `work queue: ${toText(key)} does not hold a work-queue state record; was the prefix written by something else?`,
    { cause },
  );
}

/** Cuts an error message to `limits.workQueue.errorCharsMax`. */
export function clipError(message: string): string {
  return message.length <= workQueueErrorCharsMax
    ? message
    : `${message.slice(0, workQueueErrorCharsMax - 1)}…`;
}

let lastIdMs = 0;
let idSeq = 0;

/**
 * A new item id: `<ms, 13 digits>-<sequence, 6 base-36 digits>-<12 hex random>`. The sequence
 * makes ids from one process strictly increasing even within one millisecond (or when the clock
 * steps back), so one producer's items are served FIFO within a priority.
 */
export function newItemId(nowMs: number): string {
  const ms = Math.max(lastIdMs, Math.max(0, Math.floor(nowMs)));
  idSeq = ms === lastIdMs ? (idSeq + 1) % 36 ** 6 : 0;
  lastIdMs = ms;
  const rand = new Uint8Array(6);
  crypto.getRandomValues(rand);
  const hex = Array.from(rand, (b) => b.toString(16).padStart(2, '0')).join('');
  return `${String(ms).padStart(13, '0')}-${idSeq.toString(36).padStart(6, '0')}-${hex}`;
}

/** The enqueue time encoded in an id (ms), or 0 if it has none. */
export function idTimeMs(id: string): number {
  const n = Number(id.slice(0, 13));
  return Number.isSafeInteger(n) ? n : 0;
}

/** The last path segment of a key: the item id. */
export function idOf(key: Uint8Array): string {
  const k = toText(key);
  return k.slice(k.lastIndexOf('/') + 1);
}

/** Every key of one queue. */
export class WorkQueueKeys {
  readonly root: string;
  readonly itemsPrefix: string;
  readonly readyPrefix: string;
  readonly delayedPrefix: string;
  readonly inflightPrefix: string;
  readonly recPrefix: string;
  readonly leasePrefix: string;
  readonly deadPrefix: string;

  constructor(name: string) {
    this.root = `${name}/`;
    this.itemsPrefix = `${this.root}items/`;
    this.readyPrefix = `${this.root}ready/`;
    this.delayedPrefix = `${this.root}delayed/`;
    this.inflightPrefix = `${this.root}inflight/`;
    this.recPrefix = `${this.inflightPrefix}rec/`;
    this.leasePrefix = `${this.inflightPrefix}lease/`;
    this.deadPrefix = `${this.root}dead/`;
  }

  item(id: string): string {
    return `${this.itemsPrefix}${id}`;
  }
  ready(priority: number, id: string): string {
    return `${this.readyPrefix}${String(priority).padStart(5, '0')}/${id}`;
  }
  delayed(dueMs: number, id: string): string {
    return `${this.delayedPrefix}${dueDigits(dueMs)}/${id}`;
  }
  /** The first delayed key that is not yet due at `nowMs` (exclusive end of the due range). */
  delayedEnd(nowMs: number): string {
    return `${this.delayedPrefix}${dueDigits(nowMs + 1)}/`;
  }
  rec(id: string): string {
    return `${this.recPrefix}${id}`;
  }
  lease(id: string): string {
    return `${this.leasePrefix}${id}`;
  }
  dead(id: string): string {
    return `${this.deadPrefix}${id}`;
  }

  /** The due time (ms) encoded in a delayed key, or undefined if the key is not one. */
  dueOf(key: Uint8Array): number | undefined {
    const k = toText(key);
    if (!k.startsWith(this.delayedPrefix)) return undefined;
    const n = Number(k.slice(this.delayedPrefix.length, this.delayedPrefix.length + 13));
    return Number.isSafeInteger(n) ? n : undefined;
  }

  /** `[start, end)` of a prefix, as bytes. */
  static span(prefix: string): { key: Uint8Array; end: Uint8Array } {
    const key = toBytes(prefix);
    return { key, end: prefixEnd(key) };
  }
}

function dueDigits(ms: number): string {
  return String(Math.min(dueMsMax, Math.max(0, Math.floor(ms)))).padStart(13, '0');
}
