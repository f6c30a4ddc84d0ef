import { CdromError } from '../domain/errors.js';

/**
 * Run `fn` with a deadline. The signal kills child processes still running; the race
 * makes the caller return on time even when a step cannot be cancelled (a stat on a
 * hung NFS mount, a libvirt call). The outcome is unknown then, hence TIMEOUT is
 * retryable. What `fn` still produces after the deadline goes to `late` (a connection
 * opened too late is closed there rather than leaked).
 */
export async function withDeadline<T>(ms: number, what: string, fn: (signal: AbortSignal) => Promise<T>, late?: (value: T) => void): Promise<T> {
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      controller.abort();
      reject(new CdromError('TIMEOUT', `${what} did not finish within ${ms} ms`, { retryable: true }));
    }, ms);
  });
  const work = fn(controller.signal);
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
    if (controller.signal.aborted && late !== undefined) work.then(late, () => undefined);
  }
}

/** For steps queued behind others: give up before starting once the deadline passed. */
export function checkDeadline(signal: AbortSignal, what: string): void {
  if (signal.aborted) throw new CdromError('TIMEOUT', `${what} timed out while waiting its turn`, { retryable: true });
}
