/** CONTRACT.md section 7: test-only hooks that crash the process or fail a step. */
export const FAILPOINTS = ['metadata-begin', 'prepare', 'libvirt-update', 'teardown', 'metadata-finish', 'before-ack'] as const;
export type Failpoint = (typeof FAILPOINTS)[number];
export type FailpointAction = 'crash' | 'error';

export interface Failpoints {
  /** Call where the step would run: throws under `error`. */
  before(point: Failpoint): void;
  /** Call right after the step succeeded: exits with 137 under `crash`. */
  after(point: Failpoint): void;
}

export const NO_FAILPOINTS: Failpoints = { before: () => undefined, after: () => undefined };

