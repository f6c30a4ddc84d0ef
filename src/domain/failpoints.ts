/** CONTRACT.md section 7: test-only hooks that crash the process or fail a step. */
export const FAILPOINTS = [
  'metadata-begin',
  'prepare',
  'libvirt-update',
  'teardown',
  'metadata-finish',
  'before-ack',
  'journal-pending',
  'journal-done',
  'rollback',
] as const;
export type Failpoint = (typeof FAILPOINTS)[number];
export type FailpointAction = 'crash' | 'error';

/** One item of `CDROM_FAILPOINT`: `<point>:<action>[@<vmId>]`. */
export interface FailpointRule {
  readonly point: Failpoint;
  readonly action: FailpointAction;
  /** only this VM's steps (its commands and its recovery); null: every VM */
  readonly vmId: string | null;
}

export interface Failpoints {
  /** Call where the step on `vmId` would run: throws under `error`. */
  before(point: Failpoint, vmId: string): void;
  /** Call right after the step on `vmId` succeeded: exits with 137 under `crash`. */
  after(point: Failpoint, vmId: string): void;
}

export const NO_FAILPOINTS: Failpoints = { before: () => undefined, after: () => undefined };
