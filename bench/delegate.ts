/**
 * `--consensus` delegates to bench/consensus.ts (a standalone script owned elsewhere): it is run as
 * its own process with tsx, with the run's time bound and result path passed on, and stopped by
 * PID if this run is interrupted.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));

export async function runConsensusScript(args: readonly string[], signal: AbortSignal): Promise<number> {
  const script = join(here, 'consensus.ts');
  if (!existsSync(script)) {
    console.error('--consensus: bench/consensus.ts does not exist yet; nothing measured.');
    return 2;
  }
  const tsx = join(here, '..', 'node_modules', '.bin', 'tsx');
  const child = spawn(tsx, [script, ...args], { stdio: 'inherit' });
  const stop = (): void => {
    if (child.pid !== undefined && child.exitCode === null) child.kill('SIGTERM');
  };
  signal.addEventListener('abort', stop, { once: true });
  try {
    return await new Promise<number>((resolve, reject) => {
      child.on('error', reject);
      child.on('exit', (code, sig) => resolve(code ?? (sig !== null ? 130 : 1)));
    });
  } finally {
    signal.removeEventListener('abort', stop);
  }
}
