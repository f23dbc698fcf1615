/**
 * etcd's JWT auth tokens on `conclave serve` (backends/raft/server/jwt.ts), with keys made here.
 * etcd's own e2e tests (TestCtlV3Auth*JWT, `npm run e2e:etcd`) run them end to end.
 */
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { JwtTokens, parseGoDuration, parseJwtSpec } from '../../backends/raft/server/jwt.js';

const dir = mkdtempSync(join(tmpdir(), 'conclave-jwt-'));
const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const file = (name: string, text: string) => {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
};
const rsaPriv = file('rsa.key', rsa.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
const rsaPub = file('rsa.pub', rsa.publicKey.export({ type: 'spki', format: 'pem' }) as string);
const ecPriv = file('ec.key', ec.privateKey.export({ type: 'pkcs8', format: 'pem' }) as string);
const secret = file('hmac', 'a shared secret');

const now = Date.UTC(2026, 0, 1);

describe('JWT auth tokens', () => {
  it('parses etcd option strings and Go durations', () => {
    expect(parseJwtSpec(`jwt,pub-key=${rsaPub},priv-key=${rsaPriv},sign-method=RS256,ttl=1s`)).toEqual({
      signMethod: 'RS256',
      ttlMs: 1000,
      pubKeyFile: rsaPub,
      privKeyFile: rsaPriv,
    });
    expect(parseJwtSpec(`jwt,priv-key=${rsaPriv},sign-method=RS256`).ttlMs).toBe(5 * 60_000);
    expect(parseGoDuration('1h30m')).toBe(90 * 60_000);
    expect(parseGoDuration('250ms')).toBe(250);
    expect(() => parseJwtSpec('jwt,sign-method=XX1')).toThrow(/sign-method/);
    expect(() => parseJwtSpec('jwt,sign-method=RS256,ttl=soon')).toThrow(/duration/);
    expect(() => parseJwtSpec('jwt,sign-method=RS256,colour=blue')).toThrow(/unknown JWT option/);
  });

  for (const [alg, priv] of [
    ['RS256', rsaPriv],
    ['PS384', rsaPriv],
    ['ES256', ecPriv],
    ['HS512', secret],
  ] as const) {
    it(`${alg}: a token names its user until it expires; a changed token is refused`, () => {
      const t = new JwtTokens({ signMethod: alg, privKeyFile: priv, ttlMs: 1000 });
      const token = t.sign('alice', 7, now);
      expect(t.verify(token, now + 999)).toEqual({ username: 'alice', revision: 7 });
      expect(t.verify(token, now + 2000)).toBeUndefined();
      const [h, p, s] = token.split('.') as [string, string, string];
      const forged = Buffer.from(JSON.stringify({ username: 'root', revision: 7, exp: 2e9 })).toString(
        'base64url',
      );
      expect(t.verify(`${h}.${forged}.${s}`, now)).toBeUndefined();
      expect(t.verify(`${h}.${p}`, now)).toBeUndefined();
    });
  }

  it('refuses a token signed with another algorithm, and "none"', () => {
    const rs = new JwtTokens({ signMethod: 'RS256', privKeyFile: rsaPriv, ttlMs: 60_000 });
    const hs = new JwtTokens({ signMethod: 'HS256', privKeyFile: secret, ttlMs: 60_000 });
    expect(rs.verify(hs.sign('alice', 1, now), now)).toBeUndefined();
    const none = `${Buffer.from('{"alg":"none"}').toString('base64url')}.${Buffer.from('{"username":"root","revision":1}').toString('base64url')}.`;
    expect(rs.verify(none, now)).toBeUndefined();
  });

  it('with only a public key, verifies but does not issue (etcd verify-only)', () => {
    const full = new JwtTokens({ signMethod: 'RS256', privKeyFile: rsaPriv, ttlMs: 60_000 });
    const verifier = new JwtTokens({ signMethod: 'RS256', pubKeyFile: rsaPub, ttlMs: 60_000 });
    expect(verifier.canSign).toBe(false);
    expect(verifier.verify(full.sign('bob', 3, now), now)?.username).toBe('bob');
    expect(() => verifier.sign('bob', 3, now)).toThrow(/verify-only/);
  });

  it('refuses keys that do not match, of the wrong kind, or missing', () => {
    const other = file(
      'other.pub',
      generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey.export({
        type: 'spki',
        format: 'pem',
      }) as string,
    );
    expect(
      () => new JwtTokens({ signMethod: 'RS256', privKeyFile: rsaPriv, pubKeyFile: other, ttlMs: 1 }),
    ).toThrow(/does not match/);
    expect(() => new JwtTokens({ signMethod: 'ES256', privKeyFile: rsaPriv, ttlMs: 1 })).toThrow(/ec key/);
    expect(() => new JwtTokens({ signMethod: 'RS256', ttlMs: 1 })).toThrow(/priv-key/);
    expect(() => new JwtTokens({ signMethod: 'RS256', privKeyFile: join(dir, 'nope'), ttlMs: 1 })).toThrow(
      /cannot read/,
    );
  });
});
