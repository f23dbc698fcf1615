import { describe, expect, it } from 'vitest';
import { compareBytes, leaseHex, prefixEnd, resolveRange, toBytes } from '../../src/keys.js';

const b = (...xs: number[]) => new Uint8Array(xs);

describe('keys', () => {
  it('prefixEnd increments the last byte below 0xff and drops the rest', () => {
    expect(Array.from(prefixEnd(toBytes('abc')))).toEqual(Array.from(toBytes('abd')));
    expect(Array.from(prefixEnd(b(0x61, 0xff)))).toEqual([0x62]);
    expect(Array.from(prefixEnd(b(0xff, 0xff)))).toEqual([0]);
    expect(Array.from(prefixEnd(b()))).toEqual([0]);
  });

  it('resolveRange maps selectors to etcd wire ranges', () => {
    expect(Array.from(resolveRange('a', undefined).end)).toEqual([]);
    expect(Array.from(resolveRange('a', { fromKey: true }).end)).toEqual([0]);
    expect(Array.from(resolveRange('', { prefix: true }).key)).toEqual([0]);
    expect(Array.from(resolveRange('a', { end: 'c' }).end)).toEqual(Array.from(toBytes('c')));
    expect(() => resolveRange('a', { prefix: true, fromKey: true })).toThrow(
      expect.objectContaining({ name: 'ConclaveError', code: 'invalid-argument' }),
    );
  });

  it('compareBytes orders bytewise, shorter prefix first', () => {
    expect(compareBytes(b(1), b(1, 0))).toBeLessThan(0);
    expect(compareBytes(b(2), b(1, 9))).toBeGreaterThan(0);
    expect(compareBytes(b(0xff), b(0x7f))).toBeGreaterThan(0);
    expect(compareBytes(b(3, 4), b(3, 4))).toBe(0);
  });

  it('leaseHex is lowercase hex as etcd recipes write it, and refuses numbers', () => {
    expect(leaseHex(0x694d7a3b1c2dn)).toBe('694d7a3b1c2d');
    expect(() => leaseHex(5 as unknown as bigint)).toThrow(/bigint/);
  });
});
