/** Stable error codes of the wire contract (CONTRACT.md section 4). */
export const ERROR_CODES = [
  'INVALID_COMMAND',
  'VM_NOT_FOUND',
  'DRIVE_NOT_FOUND',
  'PATH_NOT_ALLOWED',
  'VOLUME_NOT_FOUND',
  'PREPARE_FAILED',
  'CHANGE_FAILED',
  'TEARDOWN_FAILED',
  'TIMEOUT',
  'INTERNAL',
  // v1.1, on `rejected` only: the command's AMQP user_id is missing or not in CDROM_TRUSTED_SENDERS
  'UNAUTHORIZED_SENDER',
] as const;

export type ErrorCode = (typeof ERROR_CODES)[number];

export interface ErrorInfo {
  readonly code: ErrorCode;
  readonly message: string;
  readonly retryable: boolean;
}

export interface WarningInfo {
  readonly code: string;
  readonly message: string;
}

/**
 * The one error type above the adapters. Adapters classify libvirt numbers, LVM exit
 * codes and broker errors once, into a code and whether trying again may help.
 * `retryable` means "infrastructure trouble, outcome unknown or transient": the command
 * is retried instead of failed.
 */
export class CdromError extends Error {
  override readonly name = 'CdromError';
  readonly code: ErrorCode;
  readonly retryable: boolean;

  constructor(code: ErrorCode, message: string, options: { retryable?: boolean; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? false;
  }

  toInfo(): ErrorInfo {
    return { code: this.code, message: this.message, retryable: this.retryable };
  }
}

/** Matches by `instanceof` or by name, so errors crossing module copies still classify. */
export function isCdromError(err: unknown): err is CdromError {
  return (
    err instanceof CdromError ||
    (typeof err === 'object' &&
      err !== null &&
      (err as { name?: unknown }).name === 'CdromError' &&
      typeof (err as { code?: unknown }).code === 'string')
  );
}

/** Anything not classified by an adapter is an internal error, and not retried. */
export function toCdromError(err: unknown, fallback: ErrorCode = 'INTERNAL'): CdromError {
  if (isCdromError(err)) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new CdromError(fallback, message, { cause: err });
}
