import { CdromError, type ErrorCode } from '../../domain/errors.js';
import { CommandFailure } from './command.runner.js';

/**
 * The one place storage failures become `CdromError`s. A timed-out command leaves the
 * outcome unknown (retryable TIMEOUT); a command that ran and failed is the step's own
 * failure code; anything else passes through or becomes `code` as well.
 */
export function storageError(err: unknown, code: ErrorCode, what: string): CdromError {
  if (err instanceof CdromError) return err;
  if (err instanceof CommandFailure) {
    if (err.kind === 'timeout') return new CdromError('TIMEOUT', `${what}: ${err.message}`, { retryable: true, cause: err });
    return new CdromError(code, `${what}: ${err.message}`, { cause: err });
  }
  const message = err instanceof Error ? err.message : String(err);
  return new CdromError(code, `${what}: ${message}`, { cause: err });
}

export function notFound(message: string): CdromError {
  return new CdromError('VOLUME_NOT_FOUND', message);
}

/** Node's fs errors carry a string code; only some are expected races. */
export function errnoOf(err: unknown): string | undefined {
  const code = (err as { code?: unknown } | null)?.code;
  return typeof code === 'string' ? code : undefined;
}
