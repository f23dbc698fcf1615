/**
 * The connection/session state as the recipes see it: `connected` (keep-alives succeed),
 * `suspended` (a keep-alive failed; the lease may still be alive on the server), `lost` (the lease
 * is or may be gone). The states come from `Session.state` / `Session.states()`; this file turns
 * them into the one policy every holder shares:
 *
 * By default a suspended session counts as lost for a holder: from the first failed keep-alive on,
 * the holder cannot know whether the server will expire its lease before the connection returns,
 * so it must stop acting on the lock now. `{ lostOnSuspend: false }` opts out: the holder then
 * sees `lost` only when the session is really lost (its local deadline, computed from keep-alive
 * send times, passed — still before the server could expire the lease).
 */
import { ConclaveError, ErrorCode } from '../../src/errors.js';
import { type Session, SessionState } from '../../src/session.js';

export interface LossPolicy {
  /** Treat `suspended` as lost (default true). */
  readonly lostOnSuspend: boolean;
  /** What is held, for messages ("lock orders"). */
  readonly what: string;
}

/**
 * A controller that aborts when the session is lost, or (with `lostOnSuspend`) suspended. Abort it
 * yourself to detach its listeners; it detaches itself when it fires.
 */
export function sessionLossController(session: Session, policy: LossPolicy): AbortController {
  const lost = new AbortController();
  const onLost = () => lost.abort(session.lost.reason);
  if (session.lost.aborted) {
    onLost();
    return lost;
  }
  const suspended = () =>
    new ConclaveError(
      ErrorCode.SessionLost,
      `${policy.what}: session suspended (a keep-alive failed); counted as lost (lostOnSuspend)`,
    );
  if (policy.lostOnSuspend && session.state === SessionState.Suspended) {
    lost.abort(suspended());
    return lost;
  }
  session.lost.addEventListener('abort', onLost, { once: true });
  const offState = policy.lostOnSuspend
    ? session.onStateChange((s) => {
        if (s === SessionState.Suspended) lost.abort(suspended());
      })
    : () => {};
  lost.signal.addEventListener(
    'abort',
    () => {
      session.lost.removeEventListener('abort', onLost);
      offState();
    },
    { once: true },
  );
  return lost;
}
