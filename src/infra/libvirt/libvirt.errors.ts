import { CdromError, type ErrorCode } from '../../domain/errors.js';
import { isVirtNativeError, type VirtConstants } from './virt.native.js';

/**
 * The one place libvirt error numbers are read. Everything above the adapter sees a
 * `CdromError` with a stable code and whether trying again may help.
 */

export type LibvirtOperation = 'lookup' | 'read' | 'update' | 'metadata' | 'list';

/** True when the error says the connection to libvirtd is gone or unusable. */
export function isConnectionError(err: unknown, k: VirtConstants): boolean {
  if (!isVirtNativeError(err)) {
    // The binding's own "connection is closed" (a handle used after close).
    return err instanceof Error && /connection is closed/.test(err.message);
  }
  const c = err.code;
  return (
    c === k.VIR_ERR_NO_CONNECT ||
    c === k.VIR_ERR_INVALID_CONN ||
    c === k.VIR_ERR_RPC ||
    c === k.VIR_ERR_AUTH_FAILED ||
    c === k.VIR_ERR_AUTH_UNAVAILABLE ||
    c === k.VIR_ERR_AUTH_CANCELLED ||
    (c === k.VIR_ERR_SYSTEM_ERROR && (err.domain === k.VIR_FROM_RPC || err.domain === k.VIR_FROM_REMOTE)) ||
    (c === k.VIR_ERR_INTERNAL_ERROR && err.domain === k.VIR_FROM_RPC)
  );
}

/** Lock timeouts and similar: libvirtd is there but busy; the outcome may be unknown. */
function isTransient(err: unknown, k: VirtConstants): boolean {
  return isVirtNativeError(err) && (err.code === k.VIR_ERR_OPERATION_TIMEOUT || err.code === k.VIR_ERR_AGENT_UNRESPONSIVE);
}

export function libvirtCode(err: unknown): number | null {
  return isVirtNativeError(err) ? err.code : null;
}

export function classifyLibvirtError(err: unknown, op: LibvirtOperation, k: VirtConstants, context: string): CdromError {
  const message = `${context}: ${err instanceof Error ? err.message : String(err)}`;
  if (isVirtNativeError(err) && (err.code === k.VIR_ERR_NO_DOMAIN || err.code === k.VIR_ERR_INVALID_DOMAIN)) {
    return new CdromError('VM_NOT_FOUND', message, { cause: err });
  }
  if (isConnectionError(err, k) || isTransient(err, k)) {
    // An update whose connection broke may or may not have happened: CHANGE_FAILED,
    // retryable, so the command is retried rather than failed.
    const code: ErrorCode = op === 'update' ? 'CHANGE_FAILED' : 'INTERNAL';
    return new CdromError(code, message, { retryable: true, cause: err });
  }
  if (op === 'update') return new CdromError('CHANGE_FAILED', message, { cause: err });
  return new CdromError('INTERNAL', message, { cause: err });
}
