import { CdromError, type ErrorCode } from '../domain/errors.js';

/** CONTRACT.md section 7: test-only hooks that crash the process or fail a step. */
export const FAILPOINTS = ['metadata-begin', 'prepare', 'libvirt-update', 'teardown', 'metadata-finish', 'before-ack'] as const;
export type Failpoint = (typeof FAILPOINTS)[number];
export type FailpointAction = 'crash' | 'error';

/** The error a step throws under `<point>:error`, as if the real operation failed. */
const ERROR_OF: Record<Failpoint, ErrorCode> = {
  'metadata-begin': 'INTERNAL',
  prepare: 'PREPARE_FAILED',
  'libvirt-update': 'CHANGE_FAILED',
  teardown: 'TEARDOWN_FAILED',
  'metadata-finish': 'INTERNAL',
  'before-ack': 'INTERNAL',
};

export interface Failpoints {
  /** Call where the step would run: throws under `error`. */
  before(point: Failpoint): void;
  /** Call right after the step succeeded: exits with 137 under `crash`. */
  after(point: Failpoint): void;
}

export const NO_FAILPOINTS: Failpoints = { before: () => undefined, after: () => undefined };

export function parseFailpoints(spec: string): Map<Failpoint, FailpointAction> {
  const out = new Map<Failpoint, FailpointAction>();
  for (const item of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const [point, action] = item.split(':');
    if (!FAILPOINTS.includes(point as Failpoint)) throw new Error(`unknown failpoint '${point}' (one of ${FAILPOINTS.join(', ')})`);
    if (action !== 'crash' && action !== 'error') throw new Error(`failpoint action must be crash or error, got '${action}'`);
    out.set(point as Failpoint, action);
  }
  return out;
}

export function createFailpoints(
  spec: Map<Failpoint, FailpointAction>,
  crash: () => never = () => process.exit(137),
): Failpoints {
  if (spec.size === 0) return NO_FAILPOINTS;
  return {
    before(point) {
      if (spec.get(point) === 'error') {
        throw new CdromError(ERROR_OF[point], `failpoint ${point}:error`, { retryable: false });
      }
    },
    after(point) {
      if (spec.get(point) === 'crash') crash();
    },
  };
}
