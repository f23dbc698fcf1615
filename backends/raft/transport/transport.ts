/**
 * The seam between a Raft member's loop (node/node.ts) and the network that carries its messages
 * to its peers. Two implementations ship: `MemoryTransport` (in-process clusters, tests) and
 * `TcpTransport` (one `conclave serve` process per member).
 *
 * Contracts:
 * - `send` never blocks and never throws for a network reason: Raft tolerates lost, duplicated
 *   and reordered messages, so a transport that cannot deliver (peer down, queue full) drops and
 *   counts. It may coalesce the messages of one call (and of calls in one event-loop turn) into
 *   one network write per peer.
 * - `onMessage` is called with messages addressed to the registered member, never re-entrantly
 *   from inside `send`. A transport may also hand the member driver-side reports as messages of
 *   the core's own vocabulary: `Unreachable` (a peer could not be reached, from = the peer) and
 *   `SnapStatus` (a snapshot to the peer was sent, or failed: `reject`), as etcd's raft node
 *   receives `ReportUnreachable` / `ReportSnapshot`.
 * - Node ids on this seam are the Raft core's small integers; a network transport maps them to
 *   the members' wire identities (etcd's uint64 member IDs) itself.
 */
import type { Message, NodeId } from '../consensus/types.js';

export interface Transport {
  register(id: NodeId, onMessage: (m: Message) => void): void;
  unregister(id: NodeId): void;
  send(messages: readonly Message[]): void;
}

/**
 * A request/response side channel between members, for what is not a Raft message: a follower
 * forwards lease keep-alives, time-to-live and lease lists to the leader, which owns lease
 * deadlines (etcd forwards these over its peer HTTP API: `/leases`, `/leases/internal`).
 *
 * `request` resolves with the peer's answer or rejects with a `ConclaveError` (`unavailable`,
 * retryable, when the peer cannot be reached or does not answer in time; whatever the peer's
 * handler threw, re-created with the same code, otherwise). `kind` and the bodies are opaque to
 * the transport.
 */
export interface PeerRequests {
  request(to: NodeId, kind: number, body: Uint8Array, timeoutMs: number): Promise<Uint8Array>;
  /** Installs the handler for requests from peers (one per member). */
  serve(handler: (from: NodeId, kind: number, body: Uint8Array) => Promise<Uint8Array>): void;
}
