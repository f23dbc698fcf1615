// The kit a gRPC service registered from its own file gets from the server (grpc.ts builds it).
// Its own file so that the service files and grpc.ts import it without importing each other.
import type * as grpc from '@grpc/grpc-js';
import type protobuf from 'protobufjs';
import type { MemberBackend } from './api.js';
import type { ServerContext } from './context.js';
import type { GrpcFailure } from './errors.js';

/** A unary call's handler as grpc-js registers it. */
export type UnaryHandler = grpc.handleUnaryCall<never, object>;

/**
 * What a service registered from its own file (cluster.ts, maintenance.ts) gets from the server:
 * the same registration, admission, answer and header helpers as the services in this file.
 */
export interface ServiceKit {
  readonly server: grpc.Server;
  readonly ctx: ServerContext;
  readonly backend: MemberBackend;
  readonly type: (name: string) => protobuf.Type;
  readonly encoder: (t: protobuf.Type) => (m: object) => Buffer;
  readonly decoder: (t: protobuf.Type) => (b: Buffer) => object;
  unary(
    path: string,
    req: protobuf.Type,
    res: protobuf.Type,
    handler: UnaryHandler,
    checkSize?: boolean,
  ): void;
  admit(call: grpc.ServerUnaryCall<unknown, object>, cb: grpc.sendUnaryData<object>): boolean;
  answer<R>(cb: grpc.sendUnaryData<object>, work: () => Promise<R>, toBody: (r: R) => object): Promise<void>;
  fail(cb: grpc.sendUnaryData<object>, f: GrpcFailure): void;
}
