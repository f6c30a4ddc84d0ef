import type { NonReducibleUnknown, PromiseActorLogic, PromiseSnapshot } from 'xstate';
import { CdromError, toCdromError } from '../domain/errors.js';

/**
 * The actor a machine state invokes for one step (an activity): like XState's
 * `fromPromise`, plus a deadline — a step that has not settled after `timeoutMs` fails
 * with a retryable `TIMEOUT` (its outcome is unknown), so every state handles a hang on
 * the same `onError` branches as a failure. Without the per-step `AbortController` of
 * `fromPromise` (nothing here can be cancelled) and with one shared timer for all the
 * deadlines of a machine instead of a timer per state: both were top costs per command.
 */

const RESOLVE = 'cdrom.step.resolve';
const REJECT = 'cdrom.step.reject';
const STOP = 'xstate.stop';

type StepEvent = { type: typeof RESOLVE; data: unknown } | { type: typeof REJECT; data: unknown } | { type: typeof STOP };

export type StepLogic<TOutput, TInput> = PromiseActorLogic<TOutput, TInput>;

/** One timer for many deadlines: checks every `tickMs` for the expired ones. */
export class Deadlines {
  private readonly pending = new Set<{ at: number; expire: () => void }>();
  private timer: NodeJS.Timeout | null = null;
  private readonly tickMs: number;

  constructor(readonly timeoutMs: number) {
    this.tickMs = Math.min(1_000, Math.max(5, Math.floor(timeoutMs / 10)));
  }

  /** Calls `expire` once `timeoutMs` has passed, unless the returned cancel runs first. */
  add(expire: () => void): () => void {
    const entry = { at: Date.now() + this.timeoutMs, expire };
    this.pending.add(entry);
    if (this.timer === null) {
      this.timer = setInterval(() => this.tick(), this.tickMs);
      this.timer.unref();
    }
    return () => {
      this.pending.delete(entry);
      this.stopIfIdle();
    };
  }

  get size(): number {
    return this.pending.size;
  }

  private tick(): void {
    const now = Date.now();
    for (const entry of this.pending) {
      if (entry.at > now) continue;
      this.pending.delete(entry);
      entry.expire();
    }
    this.stopIfIdle();
  }

  private stopIfIdle(): void {
    if (this.pending.size === 0 && this.timer !== null) {
      clearInterval(this.timer);
      this.timer = null;
    }
  }
}

export function fromStep<TOutput, TInput extends NonReducibleUnknown>(name: string, deadlines: Deadlines, run: (input: TInput) => Promise<TOutput>): StepLogic<TOutput, TInput> {
  return {
    config: run,
    transition: (state, event) => {
      if (state.status !== 'active') return state;
      const e = event as StepEvent;
      switch (e.type) {
        case RESOLVE:
          return { ...state, status: 'done', output: e.data as TOutput, input: undefined };
        case REJECT:
          return { ...state, status: 'error', error: e.data, input: undefined };
        case STOP:
          return { ...state, status: 'stopped', input: undefined };
        default:
          return state;
      }
    },
    start: (state, { self }) => {
      if (state.status !== 'active') return;
      const settle = (event: StepEvent): void => {
        if (self.getSnapshot().status === 'active') self.send(event);
      };
      const cancel = deadlines.add(() => settle({ type: REJECT, data: new CdromError('TIMEOUT', `${name} took longer than ${deadlines.timeoutMs} ms`, { retryable: true }) }));
      let work: Promise<TOutput>;
      try {
        work = run(state.input as TInput);
      } catch (err) {
        work = Promise.reject(toCdromError(err));
      }
      work.then(
        (data) => {
          cancel();
          settle({ type: RESOLVE, data });
        },
        (data: unknown) => {
          cancel();
          settle({ type: REJECT, data });
        },
      );
    },
    getInitialSnapshot: (_, input) => ({ status: 'active', output: undefined, error: undefined, input }),
    getPersistedSnapshot: (snapshot) => snapshot,
    restoreSnapshot: (snapshot) => snapshot as PromiseSnapshot<TOutput, TInput>,
  };
}
