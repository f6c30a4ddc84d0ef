import { CdromError, type ErrorCode } from '../domain/errors.js';
import { FAILPOINTS, NO_FAILPOINTS, type Failpoint, type FailpointAction, type FailpointRule, type Failpoints } from '../domain/failpoints.js';
import { UUID_RE } from '../domain/media.js';

export { FAILPOINTS, NO_FAILPOINTS, type Failpoint, type FailpointAction, type FailpointRule, type Failpoints };

/** The error a step throws under `<point>:error`, as if the real operation failed. */
const ERROR_OF: Record<Failpoint, ErrorCode> = {
  'metadata-begin': 'INTERNAL',
  prepare: 'PREPARE_FAILED',
  'libvirt-update': 'CHANGE_FAILED',
  teardown: 'TEARDOWN_FAILED',
  'metadata-finish': 'INTERNAL',
  'before-ack': 'INTERNAL',
  'journal-pending': 'INTERNAL',
  'journal-done': 'INTERNAL',
  rollback: 'INTERNAL',
};

/**
 * Points that take `crash` only, and why: an `error` there would be accepted and then
 * never fire, so a test written with it would pass without testing anything.
 */
const CRASH_ONLY: Partial<Record<Failpoint, string>> = {
  'before-ack': 'the ack has no step the worker could fail; use before-ack:crash',
  rollback: 'an undo step is started by the error of another point; use e.g. libvirt-update:error,rollback:crash',
};

/** `<point>:<action>[@<vmId>][,…]`; throws an Error whose message is one line. */
export function parseFailpoints(spec: string): FailpointRule[] {
  const out: FailpointRule[] = [];
  for (const item of spec.split(',').map((s) => s.trim()).filter(Boolean)) {
    const at = item.indexOf('@');
    const [point, action, extra] = (at < 0 ? item : item.slice(0, at)).split(':');
    const vmId = at < 0 ? null : item.slice(at + 1).trim();
    if (!FAILPOINTS.includes(point as Failpoint)) throw new Error(`unknown failpoint '${point}' (one of ${FAILPOINTS.join(', ')})`);
    if ((action !== 'crash' && action !== 'error') || extra !== undefined) throw new Error(`failpoint action must be crash or error, got '${item}'`);
    const refused = action === 'error' ? CRASH_ONLY[point as Failpoint] : undefined;
    if (refused !== undefined) throw new Error(`${point}:error is not supported: ${refused}`);
    if (vmId !== null && !UUID_RE.test(vmId)) throw new Error(`failpoint '${item}': the scope after @ must be a VM UUID, got '${vmId}'`);
    const rule: FailpointRule = { point: point as Failpoint, action, vmId: vmId === null ? null : vmId.toLowerCase() };
    if (out.some((r) => r.point === rule.point && r.vmId === rule.vmId)) {
      throw new Error(`failpoint '${point}' is given twice for ${vmId === null ? 'every VM' : `VM ${vmId}`}`);
    }
    out.push(rule);
  }
  return out;
}

/** `<point>:<action>[@<vmId>]`, as written in `CDROM_FAILPOINT`. */
export function formatFailpoint(rule: FailpointRule): string {
  return `${rule.point}:${rule.action}${rule.vmId === null ? '' : `@${rule.vmId}`}`;
}

/**
 * Every rule that matches the point and the VM applies: an unscoped rule everywhere, a
 * scoped one only to its VM's steps.
 */
export function createFailpoints(rules: readonly FailpointRule[], crash: () => never = () => process.exit(137)): Failpoints {
  if (rules.length === 0) return NO_FAILPOINTS;
  const applies = (point: Failpoint, action: FailpointAction, vmId: string): boolean =>
    rules.some((r) => r.point === point && r.action === action && (r.vmId === null || r.vmId === vmId.toLowerCase()));
  return {
    before(point, vmId) {
      if (applies(point, 'error', vmId)) {
        throw new CdromError(ERROR_OF[point], `failpoint ${point}:error`, { retryable: false });
      }
    },
    after(point, vmId) {
      if (applies(point, 'crash', vmId)) crash();
    },
  };
}
