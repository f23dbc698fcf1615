/**
 * gRPC status → ConclaveError, at the edge of the etcd backend. etcd reports most of its
 * semantic errors as a gRPC status whose details start with "etcdserver: "; we match those
 * strings (they are stable wire behaviour of etcd 3.x) and fall back to the gRPC code.
 */
import { X509Certificate } from 'node:crypto';
import { type ServiceError, status as Status } from '@grpc/grpc-js';
import { ConclaveError, ErrorCode } from '../../src/errors.js';

/** etcd's refusals by their stable message, with what to do where the message does not say it. */
const byMessage: ReadonlyArray<[RegExp, ErrorCode, string?]> = [
  [/required revision has been compacted/, ErrorCode.Compacted],
  [/required revision is a future revision/, ErrorCode.FutureRevision],
  [/requested lease not found/, ErrorCode.LeaseNotFound],
  [
    /too many operations in txn request/,
    ErrorCode.TooManyOps,
    "split the txn (etcd's --max-txn-ops, 128 by default)",
  ],
  [/duplicate key given in txn request/, ErrorCode.DuplicateKey, 'write each key once per txn branch'],
  [
    /request is too large/,
    ErrorCode.RequestTooLarge,
    "store less per request; etcd's limit is --max-request-bytes (1.5 MiB by default)",
  ],
  [/too many requests/, ErrorCode.TooManyRequests],
  [/key not found/, ErrorCode.InvalidArgument],
  [/key is not provided/, ErrorCode.InvalidArgument],
  [/value is provided/, ErrorCode.InvalidArgument],
  [/lease provided/, ErrorCode.InvalidArgument],
  [/no leader/, ErrorCode.Unavailable],
  [/not capable/, ErrorCode.Unavailable],
  [/permission denied/, ErrorCode.PermissionDenied],
  // Bad credentials, no token, an expired token, or one issued before a permission change.
  [
    /invalid auth token|user name is empty|authentication failed|revision of auth store is old/,
    ErrorCode.Unauthenticated,
  ],
];

/**
 * grpc-js's words for a TLS handshake that failed (Node's TLS errors and OpenSSL alerts, as carried
 * in "No connection established. Last error: …"): unknown CA, expired, wrong host, client
 * certificate refused by the server (alert 42/116), TLS spoken to a plaintext port.
 */
const tlsFailure =
  /certificate|CERT_|ERR_TLS|ERR_SSL|SSL routines|SSL alert|alert (bad|unknown|handshake)|Hostname\/IP does not match|self[- ]signed|unable to (verify|get)|wrong version number|tlsv1[0-9]? alert|packet length too long/i;

/**
 * What the server's TLS alert says of the client certificate, if it names it: etcd (Go) answers a
 * certificate it does not trust or that expired with alert 42 "bad certificate", and one that is
 * missing with 116 "certificate required" (TLS 1.3) or 40 "handshake failure".
 */
export function clientCertAlert(details: string): string | undefined {
  if (/alert certificate required/i.test(details))
    return 'the server requires a client certificate and none was sent (tls.cert, tls.key)';
  const m =
    /alert (bad certificate|unknown ca|certificate expired|certificate revoked|certificate unknown|unsupported certificate)/i.exec(
      details,
    );
  return m ? `the server refused the client certificate (TLS alert "${m[1]}")` : undefined;
}

/**
 * A problem with the client certificate that can be seen here, before any server is asked: it has
 * expired or is not valid yet (`final`: every server that checks client certificates refuses it),
 * or it is not issued by `tls.ca` (not final: a server may trust another CA for its clients than
 * the one that issued its own certificate). Used to explain a connection the server closed during
 * the TLS handshake without saying why: a Node server (conclave serve) refuses a client
 * certificate by closing the connection, with no TLS alert.
 */
export function clientCertProblem(
  tls: { ca?: Uint8Array | string; cert?: Uint8Array | string } | undefined,
  nowMs = Date.now(),
): { text: string; final: boolean } | undefined {
  if (tls?.cert === undefined) return undefined;
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(Buffer.from(tls.cert));
  } catch {
    return undefined;
  }
  const cn = /CN=([^\n,]*)/.exec(cert.subject)?.[1] ?? cert.subject;
  if (Date.parse(cert.validTo) < nowMs)
    return { text: `the client certificate (tls.cert, CN=${cn}) expired on ${cert.validTo}`, final: true };
  if (Date.parse(cert.validFrom) > nowMs)
    return {
      text: `the client certificate (tls.cert, CN=${cn}) is not valid before ${cert.validFrom}`,
      final: true,
    };
  if (tls.ca === undefined) return undefined;
  const cas = splitPem(Buffer.from(tls.ca).toString('latin1'));
  const issuers: X509Certificate[] = [];
  for (const pem of cas) {
    try {
      issuers.push(new X509Certificate(pem));
    } catch {
      // not a certificate: nothing to compare with
    }
  }
  if (issuers.length === 0 || issuers.some((ca) => cert.checkIssued(ca) && cert.verify(ca.publicKey)))
    return undefined;
  const issuer = /CN=([^\n,]*)/.exec(cert.issuer)?.[1] ?? cert.issuer;
  return {
    text: `the client certificate (tls.cert, CN=${cn}) is issued by CN=${issuer}, not by a CA in tls.ca; the server refuses it unless it trusts that CA for clients`,
    final: false,
  };
}

const splitPem = (text: string): string[] =>
  text.match(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g) ?? [];

/**
 * A connection failure that, over TLS with a client certificate, is how a Node TLS server refuses
 * the certificate: the connection closed or reset right at the handshake ("Failed to connect",
 * ECONNRESET, "Connection dropped", "socket disconnected"), with no alert.
 */
export function isClosedAtHandshake(err: unknown): boolean {
  return (
    isGrpcError(err) &&
    err.code === Status.UNAVAILABLE &&
    /Failed to connect|ECONNRESET|Connection dropped|socket disconnected|Connection closed/i.test(
      err.details ?? '',
    )
  );
}

/** The failure is a TLS handshake failure (see tlsFailure); it will not pass by retrying. */
export function isTlsFailure(err: unknown): boolean {
  return isGrpcError(err) && err.code === Status.UNAVAILABLE && tlsFailure.test(err.details ?? '');
}

/**
 * The request certainly never reached a server: no connection could be made (refused, unreachable,
 * name not resolved, TLS failed) or the deadline passed while the call still waited for a connection
 * (grpc-js reports "Waiting for LB pick": no transport was ever picked, so nothing was written).
 * grpc-js declares a connection ready only after the server's HTTP/2 SETTINGS arrived, so a
 * listener that accepts TCP and never answers leaves calls waiting here.
 */
export function isPreSendFailure(err: ServiceError): boolean {
  const d = err.details ?? '';
  if (err.code === Status.DEADLINE_EXCEEDED) {
    return /Waiting for LB pick|waiting for name resolution|waiting for metadata filters/.test(d);
  }
  if (err.code === Status.RESOURCE_EXHAUSTED) return /^Attempted to send message/.test(d);
  if (err.code !== Status.UNAVAILABLE) return false;
  return /No connection established|ECONNREFUSED|Name resolution failed|connect ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|Waiting for LB pick/i.test(
    d,
  );
}

export function isGrpcError(err: unknown): err is ServiceError {
  return (
    typeof err === 'object' &&
    err !== null &&
    'code' in err &&
    typeof (err as { code: unknown }).code === 'number' &&
    'details' in err
  );
}

/**
 * A gRPC status's details as a reason for a message: grpc-js's "No connection established. Last
 * error: X (timestamp). Resolution note: " becomes X; no empty trailing fragments.
 */
export function grpcReason(err: ServiceError): string {
  let d = (err.details ?? err.message ?? '').replace(/\s+/g, ' ');
  d = d.replace(/\s*Resolution note:\s*$/, '');
  const last = /Last error: (.*)$/.exec(d);
  if (last) d = last[1]!;
  d = d
    .replace(/\s*\(\d{4}-\d\d-\d\dT[\d:.]+Z\)/g, '')
    .replace(/^Error: /, '')
    .replace(/^Response message parsing error: /, '');
  return d.trim().replace(/\.$/, '') || `gRPC status ${err.code}`;
}

/** RESOURCE_EXHAUSTED because of a message size rather than load. */
const requestSize =
  /^Attempted to send message with a size larger than|^grpc: received message larger than max/;
const responseSize =
  /^Received message larger than max|decompresses to a size larger than|would decode into more than/;

/**
 * Maps a gRPC failure. `mayHaveApplied`: the call was a write, so a failure after it reached the
 * wire leaves its outcome unknown → `indeterminate`, never retryable. `retryable` is true only where
 * the request certainly had no effect and repeating it can succeed (see docs/errors.md).
 */
export function mapGrpcError(err: unknown, what: string, mayHaveApplied: boolean): ConclaveError {
  if (err instanceof ConclaveError) return err;
  if (!isGrpcError(err)) {
    return new ConclaveError(
      ErrorCode.Internal,
      `${what}: ${err instanceof Error ? err.message : String(err)}`,
      { cause: err },
    );
  }
  const details = err.details ?? err.message;
  const reason = grpcReason(err);
  for (const [re, code, hint] of byMessage) {
    if (re.test(details)) {
      return new ConclaveError(code, hint ? `${what}: ${reason}; ${hint}` : `${what}: ${reason}`, {
        cause: err,
      });
    }
  }
  if (isTlsFailure(err)) {
    const cert = clientCertAlert(details);
    return new ConclaveError(
      ErrorCode.TlsFailure,
      cert
        ? `${what}: the TLS handshake was refused: ${cert} (${reason}); check tls.cert and tls.key against the CA the server trusts for clients (etcd: --trusted-ca-file)`
        : `${what}: the TLS handshake failed (${reason}); check the CA (tls.ca), the server's name and validity, and the client certificate`,
      { cause: err },
    );
  }
  switch (err.code) {
    case Status.UNAVAILABLE:
    case Status.DEADLINE_EXCEEDED: {
      if (isPreSendFailure(err)) {
        const why =
          err.code === Status.DEADLINE_EXCEEDED
            ? 'no connection to etcd was established before the deadline; the request was never sent'
            : `no connection to etcd (${reason}); the request was never sent`;
        return new ConclaveError(ErrorCode.Unavailable, `${what}: ${why}`, { cause: err, retryable: true });
      }
      if (mayHaveApplied) {
        return new ConclaveError(
          ErrorCode.Indeterminate,
          `${what}: the connection failed or the deadline passed after the request was sent; it may or may not have been applied (${reason})`,
          { cause: err, retryable: false },
        );
      }
      const code = err.code === Status.UNAVAILABLE ? ErrorCode.Unavailable : ErrorCode.DeadlineExceeded;
      return new ConclaveError(code, `${what}: ${reason}`, { cause: err });
    }
    case Status.RESOURCE_EXHAUSTED: {
      if (requestSize.test(details)) {
        return new ConclaveError(
          ErrorCode.RequestTooLarge,
          `${what}: the request is larger than etcd accepts (${reason}); etcd's limit is --max-request-bytes (1.5 MiB by default)`,
          { cause: err, retryable: false },
        );
      }
      if (responseSize.test(details)) return sizeError(err, what, reason, mayHaveApplied);
      return new ConclaveError(ErrorCode.TooManyRequests, `${what}: ${reason}`, { cause: err });
    }
    case Status.INTERNAL:
      if (responseSize.test(details)) return sizeError(err, what, reason, mayHaveApplied);
      return new ConclaveError(ErrorCode.Internal, `${what}: ${reason} (gRPC code ${err.code})`, {
        cause: err,
      });
    case Status.INVALID_ARGUMENT:
    case Status.FAILED_PRECONDITION:
    case Status.OUT_OF_RANGE:
    case Status.NOT_FOUND:
      return new ConclaveError(ErrorCode.InvalidArgument, `${what}: ${reason}`, { cause: err });
    case Status.PERMISSION_DENIED:
      return new ConclaveError(ErrorCode.PermissionDenied, `${what}: ${reason}`, { cause: err });
    case Status.UNAUTHENTICATED:
      return new ConclaveError(ErrorCode.Unauthenticated, `${what}: ${reason}`, { cause: err });
    case Status.CANCELLED:
      // Not our signal (that rejects with its reason before mapping): the server or the channel
      // cancelled the call (etcd: "request cancelled"), possibly after a write was proposed.
      if (mayHaveApplied) {
        return new ConclaveError(
          ErrorCode.Indeterminate,
          `${what}: the call was cancelled after the request was sent (${reason}); it may or may not have been applied`,
          { cause: err, retryable: false },
        );
      }
      return new ConclaveError(ErrorCode.Aborted, `${what}: cancelled (${reason})`, { cause: err });
    default:
      return new ConclaveError(ErrorCode.Internal, `${what}: ${reason} (gRPC code ${err.code})`, {
        cause: err,
      });
  }
}

/** A response over maxReceiveBytes, or over the decoded-size bound (decode-guard.ts). */
function sizeError(err: ServiceError, what: string, reason: string, mayHaveApplied: boolean): ConclaveError {
  if (mayHaveApplied) {
    return new ConclaveError(
      ErrorCode.Indeterminate,
      `${what}: etcd's response was larger than the client accepts (${reason}); the request may or may not have been applied`,
      { cause: err, retryable: false },
    );
  }
  return new ConclaveError(
    ErrorCode.ResponseTooLarge,
    `${what}: the response is larger than the client accepts (${reason}); read fewer keys at a time (limit, keysOnly) or raise maxReceiveBytes`,
    { cause: err, retryable: false },
  );
}

/** The failure is a response the client refused for its size (a retry would get the same). */
export function isResponseSizeError(err: unknown): boolean {
  return isGrpcError(err) && responseSize.test(err.details ?? '');
}
