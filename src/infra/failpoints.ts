import { CdromError, type ErrorCode } from '../domain/errors.js';
import { FAILPOINTS, NO_FAILPOINTS, type Failpoint, type FailpointAction, type Failpoints } from '../domain/failpoints.js';

export { FAILPOINTS, NO_FAILPOINTS, type Failpoint, type FailpointAction, type Failpoints };

/** The error a step throws under `<point>:error`, as if the real operation failed. */
const ERROR_OF: Record<Failpoint, ErrorCode> = {
  'metadata-begin': 'INTERNAL',
  prepare: 'PREPARE_FAILED',
  'libvirt-update': 'CHANGE_FAILED',
  teardown: 'TEARDOWN_FAILED',
  'metadata-finish': 'INTERNAL',
  'before-ack': 'INTERNAL',
};

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
