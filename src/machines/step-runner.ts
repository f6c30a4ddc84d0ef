import type { AnyActorRef } from 'xstate';
import { CdromError, toCdromError } from '../domain/errors.js';

/**
 * Runs the CD-ROM machine's steps. A state's entry action starts its activity here; the
 * outcome goes back to the actor as one event: `<doneType>` with the output, or
 * `step.error` with the error. A step has a deadline: one that has not settled after
 * `timeoutMs` fails with a retryable `TIMEOUT` (its outcome is unknown). Whatever the
 * step does afterwards, and the outcome of a step its actor has moved on from, is dropped.
 *
 * Why not `invoke`: a child actor per step (XState's `fromPromise`, its AbortController,
 * an `after` timer per state) cost ~150 µs per nine-step command against ~40 µs for the
 * same steps started by entry actions (`npx tsx bench/steps.bench.ts`). The deadlines of
 * all drives share one timer.
 */

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

/** What the runner says about a step that outlived its deadline. */
export interface HungStep {
  readonly actor: AnyActorRef;
  /** the activity, e.g. `updateDevice` */
  readonly step: string;
  /** what the step does, e.g. "changing the media (updateDeviceFlags)" */
  readonly what: string;
  readonly startedAt: number;
  /** settles when the step's call has returned (it can no longer land) */
  readonly settled: Promise<void>;
}

/**
 * Starts steps for actors and sends each one's outcome back, once, unless it is stale.
 *
 * A deadline ends the actor's *waiting*, not the work: the call behind a timed-out step
 * goes on and may still land. The runner keeps every unsettled step per actor, so the
 * owner of the actor (the drive registry) can hold the drive until they have all
 * returned (`quiet`), and hears of each hang (`onHang`).
 */
export class StepRunner {
  /** the latest step started per actor: an older one's outcome is stale */
  private readonly latest = new WeakMap<AnyActorRef, number>();
  /** steps whose work has not settled yet, per actor (timed out or not) */
  private readonly outstanding = new Map<AnyActorRef, Set<Promise<void>>>();

  constructor(
    private readonly deadlines: Deadlines,
    private readonly onHang?: (step: HungStep) => void,
  ) {}

  run<T>(self: AnyActorRef, doneType: string, what: string, work: () => Promise<T>): void {
    const token = (this.latest.get(self) ?? 0) + 1;
    this.latest.set(self, token);
    const startedAt = Date.now();
    let settled = false;
    let finished = false;
    const settle = (event: { type: string; output?: T; error?: unknown }): void => {
      if (settled) return;
      settled = true;
      cancel();
      if (this.latest.get(self) !== token || (self.getSnapshot() as { status?: unknown }).status !== 'active') return;
      self.send(event);
    };
    let promise: Promise<T>;
    try {
      promise = work();
    } catch (err) {
      promise = Promise.reject(toCdromError(err));
    }
    const done = promise.then(
      (output) => settle({ type: doneType, output }),
      (error: unknown) => settle({ type: 'step.error', error }),
    );
    const tracked = done.then(() => {
      finished = true;
      const set = this.outstanding.get(self);
      set?.delete(tracked);
      if (set?.size === 0) this.outstanding.delete(self);
    });
    let set = this.outstanding.get(self);
    if (set === undefined) this.outstanding.set(self, (set = new Set()));
    set.add(tracked);
    const cancel = this.deadlines.add(() => {
      if (finished) return;
      this.onHang?.({ actor: self, step: doneType.replace(/\.done$/, ''), what, startedAt, settled: tracked });
      settle({ type: 'step.error', error: new CdromError('TIMEOUT', `${what} took longer than ${this.deadlines.timeoutMs} ms`, { retryable: true }) });
    });
  }

  /** Whether a step of this actor is still running (in time or hung). */
  busy(self: AnyActorRef): boolean {
    return this.outstanding.has(self);
  }

  /** Resolves once no step of this actor is running: whatever it started has returned. */
  async quiet(self: AnyActorRef): Promise<void> {
    for (let set = this.outstanding.get(self); set !== undefined; set = this.outstanding.get(self)) await Promise.all(set);
  }
}
