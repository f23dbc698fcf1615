/**
 * Progress for long runs (`npm run sim`, `npm run bench`), on stderr so stdout stays the report:
 * on a terminal a live line (done/total, failures so far, elapsed, ETA) redrawn in place; when
 * stderr is not a terminal (CI, a log file) a plain line every `plainEveryMs`. Drawn by
 * cli-progress. The final report is printed by the caller, unchanged.
 */
import cliProgress from 'cli-progress';

/** How often a plain progress line is printed when stderr is not a terminal. */
export const plainEveryMs = 10_000;

export interface Progress {
  /** `n` more items done (default 1); `failed` of them failed. */
  advance(n?: number, failed?: number): void;
  /** A short note shown after the counts (e.g. the phase running). */
  note(text: string): void;
  /** Ends the line (draws it a last time). */
  stop(): void;
}

export function startProgress(label: string, total: number): Progress {
  const tty = process.stderr.isTTY === true;
  const bar = new cliProgress.SingleBar(
    {
      format: `${label} {bar} {value}/{total} | failed {failed} | {duration_formatted} elapsed | ETA {eta_formatted}{note}`,
      stream: process.stderr,
      noTTYOutput: !tty,
      notTTYSchedule: plainEveryMs,
      hideCursor: tty,
      barsize: 24,
      etaBuffer: 100,
      fps: 5,
    },
    cliProgress.Presets.shades_classic,
  );
  let failed = 0;
  let note = '';
  bar.start(total, 0, { failed, note });
  return {
    advance(n = 1, f = 0) {
      failed += f;
      bar.increment(n, { failed, note });
    },
    note(text: string) {
      note = text ? ` | ${text}` : '';
      bar.update({ failed, note });
    },
    stop() {
      bar.stop();
    },
  };
}
