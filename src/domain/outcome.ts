import type { ErrorInfo, WarningInfo } from './errors.js';
import type { Media } from './media.js';

export type ChangeAction = 'load' | 'eject' | 'change' | 'none';
export type ResultOutcome = 'completed' | 'failed' | 'rejected';

/** What one changeCD did to the drive: CONTRACT.md section 4 minus the envelope. */
export interface ChangeResult {
  readonly outcome: 'completed' | 'failed';
  readonly action: ChangeAction;
  readonly previous: Media | null;
  readonly current: Media | null;
  readonly warnings: readonly WarningInfo[];
  readonly error: ErrorInfo | null;
}

/**
 * How executing a command ended, for the consumer:
 * - `result`: done or failed for good; publish the event, then ack;
 * - `retry`: infrastructure trouble, outcome unknown; try again later (within a budget);
 * - `poisoned`: the worker died while running it too often; give it up (dead letter).
 */
export type Execution =
  | { readonly kind: 'result'; readonly result: ChangeResult; readonly startedAt: Date; readonly finishedAt: Date; readonly replayed: boolean }
  | { readonly kind: 'retry'; readonly error: ErrorInfo; readonly attempt?: Attempt }
  | { readonly kind: 'poisoned'; readonly error: ErrorInfo; readonly attempt?: Attempt };

/** What a command that has to be retried had set out to do, once that was known. */
export interface Attempt {
  readonly action: ChangeAction;
  readonly previous: Media | null;
  /** what the drive held when the step failed; its outcome is unknown */
  readonly current: Media | null;
}

export function actionFor(previous: Media | null, requested: Media | null, same: boolean): ChangeAction {
  if (same) return 'none';
  if (previous === null) return requested === null ? 'none' : 'load';
  return requested === null ? 'eject' : 'change';
}
