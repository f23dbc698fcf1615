/**
 * The transport is chosen by the endpoints' scheme, credentials never travel in URLs, and option
 * values are checked strictly. No etcd needed: the peers are hostile listeners on loopback.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { connect, type EtcdConnectOptions, parseConnectUrl } from '../../backends/connect.js';
import { rangeRequest } from '../../backends/etcd/convert.js';
import {
  checkPlaintextAuth,
  plaintextAuthWarningCode,
  resolveTransport,
} from '../../backends/etcd/endpoints.js';
import { type RecordingListener, recordingListener } from '../harness/hostile.js';

const secret = 'S3cr3t-pw-4417';
const settle = (p: Promise<unknown>) =>
  p.then(
    (v) => v,
    (e: unknown) => e,
  );

async function closeIfKv(v: unknown): Promise<void> {
  if (v && typeof v === 'object' && 'close' in v) await (v as { close(): Promise<void> }).close();
}

describe('etcd client — TLS is chosen by the scheme', () => {
  let listener: RecordingListener | undefined;
  afterEach(async () => {
    await listener?.close();
    listener = undefined;
  });

  it('https:// with auth and no tls option speaks TLS: the listener sees a ClientHello, never the password', async () => {
    listener = await recordingListener();
    const outcome = settle(
      connect({
        backend: 'etcd',
        endpoints: [`https://${listener.endpoint}`],
        auth: { username: 'alice', password: secret },
        callTimeoutMs: 1500,
        dialTimeoutMs: 1500,
      }),
    );
    const first = await listener.waitForBytes(5, 10_000);
    await closeIfKv(await outcome);
    expect(first).toBeDefined();
    // A TLS record: content type 22 (handshake), protocol major version 3.
    expect(first![0]).toBe(0x16);
    expect(first![1]).toBe(0x03);
    for (const b of listener.received) {
      expect(b.toString('latin1')).not.toContain(secret);
      expect(b.toString('latin1')).not.toContain('PRI * HTTP/2.0');
    }
  });

  it('etcds:// URLs speak TLS and etcd:// URLs plaintext', async () => {
    listener = await recordingListener();
    for (const [url, tls] of [
      [`etcds://${listener.endpoint}`, true],
      [`etcd://${listener.endpoint}`, false],
    ] as const) {
      listener.received.length = 0;
      const outcome = settle(
        connect(url).then(async (kv) => {
          await settle(kv.get('k', { signal: AbortSignal.timeout(1500) }));
          return kv;
        }),
      );
      const first = await listener.waitForBytes(5, 10_000);
      await closeIfKv(await outcome);
      expect(first).toBeDefined();
      if (tls) expect(first![0]).toBe(0x16);
      else expect(first!.toString('latin1')).toMatch(/^PRI \* HTTP\/2\.0/);
    }
  });

  it('mixed schemes, https:// with tls: false and http:// with tls options are refused at connect', async () => {
    const cases: EtcdConnectOptions[] = [
      { backend: 'etcd', endpoints: ['https://127.0.0.1:1', 'http://127.0.0.1:2'] },
      { backend: 'etcd', endpoints: ['https://127.0.0.1:1'], tls: false },
      { backend: 'etcd', endpoints: ['http://127.0.0.1:1'], tls: {} },
    ];
    for (const c of cases) {
      await expect(connect(c)).rejects.toMatchObject({ name: 'ConclaveError', code: 'invalid-argument' });
    }
    expect(resolveTransport({ backend: 'etcd', endpoints: ['https://h:1', 'h2:2'] }).tls).toEqual({});
    expect(resolveTransport({ backend: 'etcd', endpoints: ['h:1'] }).tls).toBeUndefined();
    expect(resolveTransport({ backend: 'etcd', endpoints: ['h:1'], tls: { ca: 'x' } }).tls).toEqual({
      ca: 'x',
    });
  });

  it('tls.cert without tls.key (and the reverse) is invalid-argument', async () => {
    for (const tls of [{ cert: 'CERT' }, { key: 'KEY' }]) {
      await expect(connect({ backend: 'etcd', endpoints: ['127.0.0.1:1'], tls })).rejects.toMatchObject({
        name: 'ConclaveError',
        code: 'invalid-argument',
        message: expect.stringMatching(/tls\.(cert|key)/),
      });
    }
  });
});

describe('etcd client — credentials never in URLs, endpoints or messages', () => {
  it('a URL with userinfo or a query is refused, and the message shows it redacted', async () => {
    const urls = [
      `etcd://alice:${secret}@127.0.0.1:2379`,
      `etcds://alice:${secret}@127.0.0.1:2379,127.0.0.1:2380`,
      `etcd://127.0.0.1:2379?password=${secret}`,
      `etcd://alice:pa/${secret}@127.0.0.1:2379`,
      `etcd://${secret}@127.0.0.1:2379`,
      `https://alice:${secret}@127.0.0.1:2379`,
    ];
    for (const url of urls) {
      const err = (await settle(connect(url))) as Error & { code?: string };
      expect(err).toMatchObject({ name: 'ConclaveError', code: 'invalid-argument' });
      expect(err.message).toContain('***');
      expect(err.message).not.toContain(secret);
      expect(() => parseConnectUrl(url)).toThrow(/\*\*\*/);
    }
    const err = (await settle(connect(`etcd://alice:${secret}@127.0.0.1:2379`))) as Error;
    expect(err.message).toContain('etcd://alice:***@127.0.0.1:2379');
  });

  it('an endpoint with userinfo or a query is refused, redacted', async () => {
    for (const e of [
      `http://alice:${secret}@127.0.0.1:2379`,
      `alice:${secret}@127.0.0.1:2379`,
      `https://127.0.0.1:2379/?token=${secret}`,
    ]) {
      const err = (await settle(connect({ backend: 'etcd', endpoints: [e] }))) as Error;
      expect(err).toMatchObject({ name: 'ConclaveError', code: 'invalid-argument' });
      expect(err.message).not.toContain(secret);
      expect(err.message).toContain('***');
    }
  });

  it('auth over plaintext to a non-loopback endpoint warns once (stable code), and can be refused', async () => {
    const opts: EtcdConnectOptions = {
      backend: 'etcd',
      endpoints: ['10.0.0.7:2379', '127.0.0.1:2379'],
      auth: { username: 'alice', password: secret },
    };
    const warnings: Array<Error & { code?: string }> = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    try {
      // Loopback only: nothing to say.
      checkPlaintextAuth(
        { ...opts, endpoints: ['127.0.0.1:2379', 'localhost:1'] },
        resolveTransport({ ...opts, endpoints: ['127.0.0.1:2379', 'localhost:1'] }),
        true,
      );
      // TLS: nothing to say.
      checkPlaintextAuth(opts, resolveTransport({ ...opts, tls: {} }), true);
      checkPlaintextAuth(opts, resolveTransport(opts), true);
      checkPlaintextAuth(opts, resolveTransport(opts), true);
      await new Promise((r) => setImmediate(r));
    } finally {
      process.off('warning', onWarning);
    }
    const ours = warnings.filter((w) => w.code === plaintextAuthWarningCode);
    expect(ours).toHaveLength(1);
    expect(ours[0]!.message).toContain('10.0.0.7:2379');
    expect(ours[0]!.message).not.toContain('127.0.0.1');
    expect(ours[0]!.message).not.toContain(secret);

    // Refused outright before anything is dialled.
    const err = (await settle(connect({ ...opts, plaintextAuth: 'refuse' }))) as Error;
    expect(err).toMatchObject({ name: 'ConclaveError', code: 'invalid-argument' });
    expect(err.message).toContain('10.0.0.7:2379');
    expect(err.message).not.toContain(secret);
  });

  it('option values are checked against own properties only (sort.order "toString" is refused)', () => {
    for (const sort of [{ order: 'toString' }, { target: 'constructor' }, { order: '__proto__' }]) {
      expect(() => rangeRequest('k', { sort: sort as never })).toThrow(
        expect.objectContaining({ name: 'ConclaveError', code: 'invalid-argument' }),
      );
    }
    expect(rangeRequest('k', { sort: { order: 'descend', target: 'mod' } })).toMatchObject({
      sortOrder: 2,
      sortTarget: 3,
    });
  });
});
