/**
 * One data directory holds one member: `<dir>/LOCK` is created exclusively and holds the owner's
 * pid. A second opener (another process, or another member in this process) is refused with a
 * clear error. A lock left by a process that no longer exists is taken over.
 */
import { promises as fsp } from 'node:fs';
import { join, resolve } from 'node:path';
import { ConclaveError, ErrorCode } from '../../../src/errors.js';

const heldHere = new Set<string>();

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface DirLock {
  release(): Promise<void>;
}

export async function lockDir(dir: string): Promise<DirLock> {
  const abs = resolve(dir);
  const file = join(abs, 'LOCK');
  const refuse = (owner: string) =>
    new ConclaveError(
      ErrorCode.Locked,
      `data directory ${abs} is in use by ${owner}; one directory holds one member: stop the other owner or use another directory`,
      { details: { dataDir: abs } },
    );
  if (heldHere.has(abs)) throw refuse('another member of this process');
  await fsp.mkdir(abs, { recursive: true });
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const fh = await fsp.open(file, 'wx');
      await fh.writeFile(`${process.pid}\n`);
      await fh.sync();
      await fh.close();
      heldHere.add(abs);
      let released = false;
      return {
        async release() {
          if (released) return;
          released = true;
          heldHere.delete(abs);
          await fsp.rm(file, { force: true });
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
      const pid = Number.parseInt(await fsp.readFile(file, 'utf8').catch(() => ''), 10);
      if (Number.isInteger(pid) && pid > 0 && alive(pid) && pid !== process.pid)
        throw refuse(`process ${pid}`);
      // Stale (the owner died, or it was this process before a crash-restart in tests): take over.
      await fsp.rm(file, { force: true });
    }
  }
  throw refuse('another process (the lock could not be taken)');
}
