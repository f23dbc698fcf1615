// The options of a connection to real etcd: owned by this backend, composed by connect().

/** TLS settings of an etcd connection (`https://` or `etcds://` endpoints). */
export interface TlsOptions {
  /** PEM CA bundle to verify the server with (default: system roots). */
  ca?: Uint8Array | string;
  /** PEM client certificate and key, for mutual TLS. */
  cert?: Uint8Array | string;
  /** The PEM private key of `cert`. */
  key?: Uint8Array | string;
  /** Override the name checked against the server certificate. */
  serverName?: string;
}

/** Options of a connection to real etcd (`connect('etcd://…')` or `connectEtcd`). */
export interface EtcdConnectOptions {
  /** Selects the etcd backend. */
  backend: 'etcd';
  /**
   * `host:port`, `http://host:port` (plaintext) or `https://host:port` (TLS) strings. The scheme
   * decides the transport: `https://` uses TLS even without `tls` options (system roots), a bare
   * `host:port` uses TLS when `tls` is given. Mixed schemes, `https://` with `tls: false`, `http://`
   * with `tls` options, and credentials in an endpoint are `invalid-argument`.
   */
  endpoints: string[];
  /** TLS options (TLS on), or `false` (plaintext; refused with `https://` endpoints). */
  tls?: TlsOptions | false;
  /**
   * `auth` over plaintext to a non-loopback endpoint: `'warn'` (default) emits one process warning
   * (code `CONCLAVE_PLAINTEXT_AUTH`); `'refuse'` makes connect() reject `invalid-argument`.
   */
  plaintextAuth?: 'warn' | 'refuse';
  /**
   * etcd username/password authentication (both non-empty, else `invalid-argument`). `connect()`
   * fetches a token first and rejects `unauthenticated` if etcd refuses the credentials; calls and
   * streams carry the token, and an expired one is replaced transparently (README, "Authentication").
   * Against an etcd with auth disabled the client goes on without a token. The password is never
   * logged nor put into an error message.
   */
  auth?: { username: string; password: string };
  /**
   * Deadline of every call in ms, retries included (default 10 s; etcdctl uses 5 s). It also bounds
   * a watch's creation and a lease keep-alive. A caller's signal can end a call earlier, never later.
   */
  callTimeoutMs?: number;
  /**
   * etcd's DialTimeout: connect() reaches a member within this many ms (default 3 s; endpoints are
   * tried in parallel) or rejects — `unavailable` naming each endpoint and why, or `tls-failure`.
   */
  dialTimeoutMs?: number;
  /**
   * Resolve connect() without reaching etcd (no dial; the first call connects). Refused credentials
   * and TLS failures then surface on the first call instead of at connect().
   */
  lazy?: boolean;
  /**
   * Largest response accepted, in bytes (default 16 MiB; etcd's Go client accepts 2 GiB). A larger
   * one fails `response-too-large`: read in pages with `limit`, or raise this.
   */
  maxReceiveBytes?: number;
  /**
   * Bytes one watch buffers for a consumer that is not reading before it ends with
   * `watch-overflow` (default 8 MiB; `bufferBatchesMax` bounds the batches too).
   */
  watchBufferBytesMax?: number;
  /**
   * Bytes all watches of the client buffer together (default 64 MiB). Past half of it the watch
   * stream is paused (flow control) until the consumers drained to a quarter; a batch past the
   * whole bound overflows its watch.
   */
  watchBuffersBytesMax?: number;
  /**
   * A watch stream paused longer than this (default 5 s) overflows the watch holding the most
   * bytes: etcd multiplexes a client's watches on one stream, so one consumer that never reads
   * must not stall the others.
   */
  watchPausedMsMax?: number;
}
