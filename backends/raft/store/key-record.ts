// A key's records as the MVCC key space keeps them (mvcc.ts) and the snapshot codec decodes them
// (snapshot-format.ts): in a file of their own so that both import them without importing each other.
import type { KeyValue } from '../../../src/types.js';

/**
 * One write of a key: a put or a tombstone at revision {main, sub}. Code that only needs a field
 * reads it here (`isPut`, `create`, `version`, `lease`…); `kv` is the put's KeyValue. Two forms:
 * - `LazyRecord`: the fields and where the key and value bytes are (a command's entry, or the
 *   restored snapshot); the KeyValue and its two byte views are made on first use (and kept). A
 *   record costs one object instead of four, which applying a recovered log makes by the hundred
 *   thousand (recovery time).
 * - `KvRecord`: revision and KeyValue, made at once — tombstones, and a put to a key whose
 *   previous record's kv was made (its records get read: a watcher, say), which has the views at
 *   hand (the predecessor's key, the command's value) and would otherwise make two more.
 */
export abstract class KeyRecord {
  abstract readonly main: number;
  abstract readonly sub: number;
  abstract readonly kv: KeyValue | undefined;
  abstract readonly isPut: boolean;
  abstract readonly create: number;
  abstract readonly mod: number;
  abstract readonly version: number;
  abstract readonly lease: bigint;
  abstract readonly valueLength: number;
  /** Whether the kv exists already (a `KvRecord`, or a `LazyRecord` that was read). */
  abstract readonly hasKv: boolean;
  /**
   * As a key's index entry (a restored key's first write since the restore, and its only one so
   * far; always a `LazyRecord`): the offset in `Mvcc.source` of the key's encoded records, all
   * older; else -1.
   */
  abstract readonly encodedAt: number;
  /** The value's bytes (a view, not kept, unless the kv exists). */
  abstract value(): Uint8Array;

  static tombstone(main: number, sub: number): KeyRecord {
    return new KvRecord(main, sub, undefined);
  }
}

export class LazyRecord extends KeyRecord {
  #kv: KeyValue | undefined;
  constructor(
    readonly main: number,
    readonly sub: number,
    readonly valueLength: number,
    readonly valueBytes: ArrayBufferLike,
    readonly valueOffset: number,
    readonly keyBytes: ArrayBufferLike,
    readonly keyOffset: number,
    readonly keyLength: number,
    readonly create: number,
    readonly mod: number,
    readonly version: number,
    readonly lease: bigint,
    readonly encodedAt: number,
  ) {
    super();
  }

  get isPut(): boolean {
    return true;
  }

  get kv(): KeyValue {
    this.#kv ??= {
      key: new Uint8Array(this.keyBytes, this.keyOffset, this.keyLength),
      createRevision: this.create,
      modRevision: this.mod,
      version: this.version,
      value: new Uint8Array(this.valueBytes, this.valueOffset, this.valueLength),
      lease: this.lease,
    };
    return this.#kv;
  }

  get hasKv(): boolean {
    return this.#kv !== undefined;
  }

  value(): Uint8Array {
    return this.#kv?.value ?? new Uint8Array(this.valueBytes, this.valueOffset, this.valueLength);
  }
}

export class KvRecord extends KeyRecord {
  constructor(
    readonly main: number,
    readonly sub: number,
    /** undefined for a tombstone. */
    readonly kv: KeyValue | undefined,
  ) {
    super();
  }
  get isPut(): boolean {
    return this.kv !== undefined;
  }
  get create(): number {
    return this.kv?.createRevision ?? 0;
  }
  get mod(): number {
    return this.kv?.modRevision ?? 0;
  }
  get version(): number {
    return this.kv?.version ?? 0;
  }
  get lease(): bigint {
    return this.kv?.lease ?? 0n;
  }
  get valueLength(): number {
    return this.kv ? this.kv.value.length : -1;
  }
  get hasKv(): boolean {
    return true;
  }
  get encodedAt(): number {
    return -1;
  }
  value(): Uint8Array {
    return this.kv!.value;
  }
}
