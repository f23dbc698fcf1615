/**
 * The cluster's alarms, as etcd keeps them (etcdserver/api/v3alarm/alarms.go): a set of (member
 * ID, alarm type) raised and cleared through Raft — `alarm` commands applied on every member in
 * log order — so every member lists every member's alarms, and a NOSPACE raised by one member
 * refuses the writes that grow the store on all of them (etcd's applierV3Capped). The set is part
 * of the store's snapshot (store/snapshot.ts).
 */
import { ConclaveError, ErrorCode } from '../../../src/errors.js';

/** etcd's alarm types (rpc.proto AlarmType, NONE = 0 aside). */
export type AlarmKind = 'nospace' | 'corrupt';
export const alarmCodes: Readonly<Record<AlarmKind, number>> = { nospace: 1, corrupt: 2 };
export const alarmKinds: readonly (AlarmKind | undefined)[] = [undefined, 'nospace', 'corrupt'];

export interface Alarm {
  /** The member the alarm is about (uint64). */
  readonly memberId: bigint;
  readonly alarm: AlarmKind;
}

/**
 * Alarms held at most. Member IDs in an ACTIVATE request are the caller's (etcd does not check
 * them against the membership), so the set is bounded; past it an activation is refused (the
 * refusal is applied identically on every member).
 */
export const alarmsMax = 1024;

/** etcd's ErrNoSpace ("etcdserver: mvcc: database space exceeded"), ResourceExhausted on the wire. */
export function noSpaceError(): ConclaveError {
  return new ConclaveError(ErrorCode.Unavailable, 'etcdserver: mvcc: database space exceeded', {
    retryable: false,
  });
}

const keyOf = (memberId: bigint, alarm: AlarmKind): string => `${memberId}/${alarm}`;

export class AlarmStore {
  readonly #alarms = new Map<string, Alarm>();

  get size(): number {
    return this.#alarms.size;
  }

  /** Whether an alarm of this type is raised for any member. */
  has(alarm: AlarmKind): boolean {
    for (const a of this.#alarms.values()) if (a.alarm === alarm) return true;
    return false;
  }

  /** Every alarm, by member ID then type (etcd lists its map unordered; an order keeps output stable). */
  list(): Alarm[] {
    return [...this.#alarms.values()].sort((a, b) =>
      a.memberId === b.memberId
        ? alarmCodes[a.alarm] - alarmCodes[b.alarm]
        : a.memberId < b.memberId
          ? -1
          : 1,
    );
  }

  /** Raises an alarm; returns it (also when it was raised already, as etcd's Activate returns it). */
  activate(memberId: bigint, alarm: AlarmKind): Alarm {
    const k = keyOf(memberId, alarm);
    const had = this.#alarms.get(k);
    if (had) return had;
    if (this.#alarms.size >= alarmsMax)
      throw new ConclaveError(
        ErrorCode.InvalidArgument,
        `etcdserver: too many alarms (alarmsMax ${alarmsMax}); disarm some first`,
      );
    const a = { memberId, alarm };
    this.#alarms.set(k, a);
    return a;
  }

  /** Clears an alarm; returns it, or undefined when it was not raised (etcd's Deactivate). */
  deactivate(memberId: bigint, alarm: AlarmKind): Alarm | undefined {
    const k = keyOf(memberId, alarm);
    const had = this.#alarms.get(k);
    if (had) this.#alarms.delete(k);
    return had;
  }

  /** `[count u32]` then per alarm `[member ID u64][type u8]` (little-endian). */
  encode(): Buffer {
    const list = this.list();
    const b = Buffer.alloc(4 + 9 * list.length);
    b.writeUInt32LE(list.length, 0);
    let o = 4;
    for (const a of list) {
      b.writeBigUInt64LE(a.memberId, o);
      b.writeUInt8(alarmCodes[a.alarm], o + 8);
      o += 9;
    }
    return b;
  }

  /** Replaces the set with an encoded one; returns the bytes read. Throws RangeError on a malformed one. */
  restore(b: Uint8Array, at = 0): number {
    const v = Buffer.from(b.buffer, b.byteOffset, b.byteLength);
    if (v.length - at < 4) throw new RangeError('an alarm section without its count');
    const n = v.readUInt32LE(at);
    if (n > alarmsMax || v.length - at - 4 < 9 * n)
      throw new RangeError(`an alarm section of ${n} alarms in ${v.length - at - 4} bytes`);
    this.#alarms.clear();
    let o = at + 4;
    for (let i = 0; i < n; i++) {
      const memberId = v.readBigUInt64LE(o);
      const alarm = alarmKinds[v.readUInt8(o + 8)];
      if (!alarm) throw new RangeError(`an alarm of unknown type ${v.readUInt8(o + 8)}`);
      this.#alarms.set(keyOf(memberId, alarm), { memberId, alarm });
      o += 9;
    }
    return o - at;
  }
}
