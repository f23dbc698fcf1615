import { describe, expect, it } from 'vitest';
import { connect, parseConnectUrl } from '../../backends/connect.js';

describe('connect URL parsing', () => {
  it('parses etcd:// with several endpoints and etcds:// as TLS', () => {
    expect(parseConnectUrl('etcd://127.0.0.1:2379,10.0.0.2:2380')).toEqual({
      backend: 'etcd',
      endpoints: ['127.0.0.1:2379', '10.0.0.2:2380'],
    });
    expect(parseConnectUrl('etcds://h:1')).toEqual({ backend: 'etcd', endpoints: ['h:1'], tls: {} });
  });

  it('parses embedded: with nodes and dir', () => {
    expect(parseConnectUrl('embedded:')).toEqual({ backend: 'embedded' });
    expect(parseConnectUrl('embedded:?nodes=3')).toEqual({ backend: 'embedded', nodes: 3 });
    expect(parseConnectUrl('embedded:?dir=./data')).toEqual({ backend: 'embedded', dataDir: './data' });
  });

  it('refuses anything else with a message that says what was wrong', () => {
    expect(() => parseConnectUrl('redis://x:1')).toThrow(/unsupported URL "redis:\/\/x:1"/);
    expect(() => parseConnectUrl('etcd://')).toThrow(/names no endpoint/);
    expect(() => parseConnectUrl('etcd://nohost')).toThrow(/not host:port/);
    expect(() => parseConnectUrl('embedded:?nodes=0')).toThrow(/nodes must be/);
    expect(() => parseConnectUrl('embedded:?color=red')).toThrow(/unknown embedded parameter "color"/);
    expect(() => parseConnectUrl('')).toThrow(expect.objectContaining({ code: 'invalid-argument' }));
  });

  it('connect rejects an options object without endpoints', async () => {
    await expect(connect({ backend: 'etcd', endpoints: [] })).rejects.toMatchObject({
      code: 'invalid-argument',
    });
  });
});
