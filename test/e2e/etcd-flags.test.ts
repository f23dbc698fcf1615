/**
 * etcd flags that etcd's own e2e suite passes and `conclave serve` takes as etcd does:
 * `--cipher-suites` (Go's names, TLS 1.2 only, unknown names refused with etcd's words) and a
 * boolean flag given twice (the suite repeats `--client-cert-auth`; Go's flag package takes it).
 */
import { describe, expect, it } from 'vitest';
import { parseServeArgs } from '../../backends/raft/cli.js';
import { opensslCiphers } from '../../backends/raft/server/cipher-suites.js';

describe("etcd's flags as its e2e suite passes them", () => {
  it('--cipher-suites maps Go names to OpenSSL names for client and peer TLS', () => {
    expect(
      opensslCiphers('TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305'),
    ).toBe('ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305');
    // TLS 1.3 suites are not configurable (as in Go): accepted, nothing added.
    expect(opensslCiphers('TLS_AES_128_GCM_SHA256')).toBe('');
    expect(() => opensslCiphers('TLS_NOT_A_SUITE')).toThrow(/unexpected TLS cipher suite "TLS_NOT_A_SUITE"/);
    const c = parseServeArgs(['--cipher-suites', 'TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384'], {});
    expect(c.clientTls.ciphers).toBe('ECDHE-RSA-AES256-GCM-SHA384');
    expect(c.peerTls.ciphers).toBe('ECDHE-RSA-AES256-GCM-SHA384');
    expect(() => parseServeArgs(['--cipher-suites', 'RC5'], {})).toThrow(
      /--cipher-suites: unexpected TLS cipher suite/,
    );
  });

  it('a flag repeated with the same value is taken; with another value refused', () => {
    expect(parseServeArgs(['--log-level', 'warn', '--log-level=warn'], {}).logLevel).toBe('warn');
    expect(parseServeArgs(['--name', 'a', '--name=a'], {}).name).toBe('a');
    expect(() => parseServeArgs(['--name', 'a', '--name', 'b'], {})).toThrow(
      /--name: given twice with different values/,
    );
  });
});
