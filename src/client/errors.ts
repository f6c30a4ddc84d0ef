/**
 * What the engine-side client can fail with. `code` is stable (match on it, or on `name`
 * with `instanceof` across bundled copies of this module): a failed or rejected command
 * is *not* one of these — it is an answer, resolved as its result event.
 */
export type CdromClientErrorCode =
  /** No result event within timeoutMs (re-sends included). The command may still run. */
  | 'TIMEOUT'
  /** No queue is bound for the host id: its worker never declared its topology. */
  | 'NO_ROUTE'
  /** No broker of the list answered. */
  | 'CONNECT_FAILED'
  /** The connection dropped under an events() subscription (events may have been missed). */
  | 'CONNECTION_LOST'
  /** close() was called, or the call was aborted. */
  | 'CLOSED';

export class CdromClientError extends Error {
  override readonly name = 'CdromClientError';
  constructor(
    readonly code: CdromClientErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export function isCdromClientError(err: unknown, code?: CdromClientErrorCode): err is CdromClientError {
  if (!(err instanceof Error) || err.name !== 'CdromClientError') return false;
  return code === undefined || (err as CdromClientError).code === code;
}
