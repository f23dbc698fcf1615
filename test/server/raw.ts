/**
 * A raw gRPC client for the bad-input tests: sends hand-made requests (or raw bytes) to any
 * endpoint and reports the status or the decoded response, so the same request can be sent to
 * real etcd and to the served client API and the answers compared.
 */
import * as grpc from '@grpc/grpc-js';
import { root } from '../../src/protocol/codec.js';

export interface Answer {
  code: number;
  details: string;
  response?: Record<string, unknown>;
}

const identity = (b: Buffer): Buffer => b;

export class RawClient {
  readonly client: grpc.Client;
  constructor(endpoint: string) {
    this.client = new grpc.Client(endpoint, grpc.credentials.createInsecure(), {
      'grpc.max_send_message_length': 64 * 1024 * 1024,
      'grpc.max_receive_message_length': 64 * 1024 * 1024,
    });
  }

  /** A unary call with `body` encoded as `reqType` (or raw bytes), decoded as `resType`. */
  unary(
    path: string,
    body: Record<string, unknown> | Buffer,
    types?: { req: string; res: string },
    metadata = new grpc.Metadata(),
  ): Promise<Answer> {
    const enc = (m: Record<string, unknown> | Buffer): Buffer => {
      if (Buffer.isBuffer(m)) return m;
      const t = root.lookupType(`etcdserverpb.${types!.req}`);
      return Buffer.from(t.encode(t.fromObject(m)).finish());
    };
    return new Promise((resolve) => {
      this.client.makeUnaryRequest(
        path,
        enc,
        identity,
        body,
        metadata,
        { deadline: Date.now() + 10_000 },
        (err, res) => {
          if (err) return resolve({ code: err.code, details: err.details });
          const out: Answer = { code: 0, details: '' };
          if (types && res) {
            const t = root.lookupType(`etcdserverpb.${types.res}`);
            out.response = t.toObject(t.decode(res), { longs: String, defaults: false }) as Record<
              string,
              unknown
            >;
          }
          resolve(out);
        },
      );
    });
  }

  /** A Watch stream: send requests, collect decoded responses. */
  watch(metadata = new grpc.Metadata()): WatchProbe {
    return this.stream('/etcdserverpb.Watch/Watch', 'WatchRequest', 'WatchResponse', metadata);
  }

  /** Any bidirectional stream of etcd's messages. */
  stream(path: string, reqType: string, resType: string, metadata = new grpc.Metadata()): WatchProbe {
    const req = root.lookupType(`etcdserverpb.${reqType}`);
    const res = root.lookupType(`etcdserverpb.${resType}`);
    const call = this.client.makeBidiStreamRequest(
      path,
      (m: Record<string, unknown>) => Buffer.from(req.encode(req.fromObject(m)).finish()),
      identity,
      metadata,
    );
    const probe: WatchProbe = {
      responses: [],
      status: undefined,
      send: (m) => call.write(m),
      end: () => call.end(),
      close: () => call.cancel(),
      pause: () => call.pause(),
      resume: () => call.resume(),
    };
    call.on('data', (b: Buffer) =>
      probe.responses.push(
        res.toObject(res.decode(b), { longs: String, defaults: false }) as Record<string, unknown>,
      ),
    );
    call.on('error', (e: grpc.ServiceError) => {
      probe.status = { code: e.code, details: e.details };
    });
    call.on('status', (s: grpc.StatusObject) => {
      probe.status ??= { code: s.code, details: s.details };
    });
    return probe;
  }

  close(): void {
    this.client.close();
  }
}

export interface WatchProbe {
  responses: Record<string, unknown>[];
  status: { code: number; details: string } | undefined;
  send(m: Record<string, unknown>): void;
  /** Half-close: no more requests. */
  end(): void;
  close(): void;
  /** Stop reading responses (HTTP/2 flow control then holds the server back). */
  pause(): void;
  resume(): void;
}

/** The shared polling helper (test/harness/wait.ts), for the server tests that import it from here. */
export { waitFor } from '../harness/wait.js';
