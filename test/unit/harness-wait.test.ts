import { describe, expect, it } from 'vitest';
import { until, waitFor } from '../harness/wait.js';

describe('test/harness/wait', () => {
  it('until returns the first defined value, counting throws as not yet', async () => {
    let n = 0;
    const v = await until(
      'the third poll',
      () => {
        n++;
        if (n === 1) throw new Error('not up yet');
        return n === 3 ? 'ready' : undefined;
      },
      { timeoutMs: 5_000, intervalMs: 1 },
    );
    expect(v).toBe('ready');
    expect(n).toBe(3);
  });

  it('until times out with what it waited for and the last error', async () => {
    await expect(
      until(
        'a thing',
        () => {
          throw new Error('still broken');
        },
        { timeoutMs: 30, intervalMs: 5 },
      ),
    ).rejects.toThrow(/a thing: not within 30 ms \(Error: still broken\)/);
  });

  it('waitFor resolves when the condition holds and times out when it never does', async () => {
    let n = 0;
    await waitFor(() => ++n >= 2, 5_000, 'two polls', 1);
    expect(n).toBe(2);
    await expect(waitFor(async () => false, 30, 'never')).rejects.toThrow(/waiting for never/);
  });
});
