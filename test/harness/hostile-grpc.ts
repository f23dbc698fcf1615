/**
 * A gRPC server on loopback that speaks etcd's v3 wire API with answers the test chooses: a
 * stand-in for a broken or hostile etcd (never answers, answers with huge or endless responses,
 * refuses tokens). Methods without a handler answer UNIMPLEMENTED, except Maintenance/Status,
 * which answers like a one-member cluster so connect() can reach it.
 */
import * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import { decoder, encoder, methods, pb } from '../../src/protocol/codec.js';

type MethodName = keyof typeof methods;

const types: Record<MethodName, [protobuf.Type, protobuf.Type, 'unary' | 'bidi']> = {
  range: [pb.RangeRequest, pb.RangeResponse, 'unary'],
  put: [pb.PutRequest, pb.PutResponse, 'unary'],
  deleteRange: [pb.DeleteRangeRequest, pb.DeleteRangeResponse, 'unary'],
  txn: [pb.TxnRequest, pb.TxnResponse, 'unary'],
  compact: [pb.CompactionRequest, pb.CompactionResponse, 'unary'],
  watch: [pb.WatchRequest, pb.WatchResponse, 'bidi'],
  leaseGrant: [pb.LeaseGrantRequest, pb.LeaseGrantResponse, 'unary'],
  leaseRevoke: [pb.LeaseRevokeRequest, pb.LeaseRevokeResponse, 'unary'],
  leaseKeepAlive: [pb.LeaseKeepAliveRequest, pb.LeaseKeepAliveResponse, 'bidi'],
  leaseTimeToLive: [pb.LeaseTimeToLiveRequest, pb.LeaseTimeToLiveResponse, 'unary'],
  leaseLeases: [pb.LeaseLeasesRequest, pb.LeaseLeasesResponse, 'unary'],
  status: [pb.StatusRequest, pb.StatusResponse, 'unary'],
  authenticate: [pb.AuthenticateRequest, pb.AuthenticateResponse, 'unary'],
};

/** Answers with a message, or fails with a status; `undefined` leaves the call unanswered. */
export type UnaryHandler = (
  req: Record<string, unknown>,
  metadata: grpc.Metadata,
) => Promise<object | { error: grpc.StatusObject } | undefined> | object | undefined;

export type BidiHandler = (call: grpc.ServerDuplexStream<Record<string, unknown>, object>) => void;

export interface HostileHandlers {
  unary?: Partial<Record<MethodName, UnaryHandler>>;
  bidi?: Partial<Record<'watch' | 'leaseKeepAlive', BidiHandler>>;
}

export interface HostileEtcd {
  readonly endpoint: string;
  /** Methods called, in order (method name and the `token` metadata it carried). */
  readonly calls: Array<{ method: MethodName; token: string | undefined }>;
  close(): Promise<void>;
}

/** Messages the hostile server may send: far beyond what a client should accept. */
const hostileSendBytesMax = 512 * 1024 * 1024;

export async function hostileEtcd(handlers: HostileHandlers = {}): Promise<HostileEtcd> {
  const server = new grpc.Server({
    'grpc.max_send_message_length': hostileSendBytesMax,
    'grpc.max_receive_message_length': hostileSendBytesMax,
  });
  const calls: HostileEtcd['calls'] = [];
  const definition: Record<string, grpc.MethodDefinition<object, object>> = {};
  const impl: grpc.UntypedServiceImplementation = {};
  const live = new Set<grpc.ServerDuplexStream<unknown, unknown>>();
  for (const name of Object.keys(types) as MethodName[]) {
    const [req, res, kind] = types[name];
    definition[name] = {
      path: methods[name],
      requestStream: kind === 'bidi',
      responseStream: kind === 'bidi',
      requestSerialize: encoder(req),
      requestDeserialize: decoder(req),
      // A Buffer goes out as is: the test can send bytes no encoder would make (cheaply).
      responseSerialize: (
        (enc) => (m: object) =>
          Buffer.isBuffer(m) ? m : enc(m)
      )(encoder(res)),
      responseDeserialize: decoder(res),
    };
    const tokenOf = (md: grpc.Metadata) => {
      const t = md.get('token')[0];
      return typeof t === 'string' ? t : undefined;
    };
    if (kind === 'bidi') {
      impl[name] = (call: grpc.ServerDuplexStream<Record<string, unknown>, object>) => {
        calls.push({ method: name, token: tokenOf(call.metadata) });
        live.add(call as grpc.ServerDuplexStream<unknown, unknown>);
        call.on('error', () => undefined);
        call.on('close', () => live.delete(call as grpc.ServerDuplexStream<unknown, unknown>));
        const h = handlers.bidi?.[name as 'watch' | 'leaseKeepAlive'];
        if (h) h(call);
        else call.emit('error', { code: grpc.status.UNIMPLEMENTED, details: `${name} not served` });
      };
    } else {
      impl[name] = (
        call: grpc.ServerUnaryCall<Record<string, unknown>, object>,
        cb: grpc.sendUnaryData<object>,
      ) => {
        calls.push({ method: name, token: tokenOf(call.metadata) });
        const h =
          handlers.unary?.[name] ??
          (name === 'status'
            ? () => ({ header: { memberId: 1, revision: 1 }, leader: 1, version: '3.4.23' })
            : undefined);
        if (!h) {
          cb({ code: grpc.status.UNIMPLEMENTED, details: `${name} not served` });
          return;
        }
        Promise.resolve(h(call.request, call.metadata)).then(
          (r) => {
            if (r === undefined) return; // never answered
            if ('error' in r) cb(r.error as grpc.StatusObject);
            else cb(null, r);
          },
          (e: unknown) => cb({ code: grpc.status.INTERNAL, details: String(e) }),
        );
      };
    }
  }
  server.addService(definition as grpc.ServiceDefinition, impl);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, p) =>
      err ? reject(err) : resolve(p),
    ),
  );
  return {
    endpoint: `127.0.0.1:${port}`,
    calls,
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of live) c.destroy();
        server.forceShutdown();
        resolve();
      }),
  };
}
