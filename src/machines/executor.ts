import type { ChangeCdCommand } from '../contracts/schemas.js';
import type { ErrorInfo } from '../domain/errors.js';
import { driveKey } from '../domain/media.js';
import type { Attempt, Execution } from '../domain/outcome.js';

/** How often, and how far apart, a command is tried again after infrastructure trouble. */
export interface RetryPolicy {
  /** Attempts after the first one before the command is given up (dead-lettered). */
  readonly limit: number;
  /** First backoff delay; doubles per attempt up to `maxDelayMs`. */
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

/** How a command ended for good: its result, or given up (retry budget spent, poison, held too long). */
export type FinalExecution =
  | Extract<Execution, { kind: 'result' }>
  | {
      readonly kind: 'exhausted';
      readonly error: ErrorInfo;
      readonly attempt?: Attempt;
      readonly attempts: number;
      readonly startedAt: Date;
      readonly finishedAt: Date;
    };

/** What the bus hands over with a command: how to end it, and whether it still may. */
export interface CommandTicket {
  /**
   * Epoch ms by which the command must be settled (the broker's consumer timeout closes
   * the channel of a delivery held longer): a command not done by then is given up
   * (TIMEOUT, dead-lettered) rather than held on. None: no bound.
   */
  readonly settleBy?: number;
  /**
   * False once the delivery can no longer be settled (its channel is gone, or the worker
   * is stopping): the command is abandoned where it stands and left to redelivery.
   */
  live(): boolean;
  /**
   * Publishes the final outcome (event, dead letter) and acknowledges. Called inside the
   * drive's turn: the drive's next command starts only after it has returned.
   */
  settle(final: FinalExecution): Promise<void>;
}

/**
 * What the bus needs from the machines: run decoded commands against their drives.
 * Commands for the same (vmId, drive) run one at a time in the order `submit` was called,
 * through their retries: a command waiting for its retry keeps its place and holds its
 * drive. Different drives run concurrently up to the configured limit.
 */
export interface CommandExecutor {
  /**
   * Resolves once the command is settled (through its ticket) or abandoned; `joined`: it
   * was already in progress under a delivery that died, and carries on under this one.
   * Never rejects.
   */
  submit(command: ChangeCdCommand, ticket: CommandTicket): Promise<'settled' | 'abandoned'>;
  /**
   * Stops: commands not started are abandoned at once (left to redelivery), running
   * attempts finish, and no retry starts. Resolves when nothing runs, or after `timeoutMs`.
   */
  drain(timeoutMs: number): Promise<void>;
}

/**
 * One attempt per call, in call order per drive; `retry` when the outcome is unknown.
 * What simple executors (the bus tests' fakes) implement; `inPlace` gives them retries.
 */
export interface AttemptExecutor {
  execute(command: ChangeCdCommand): Promise<Execution>;
  drain(timeoutMs: number): Promise<void>;
}

export function isCommandExecutor(e: CommandExecutor | AttemptExecutor): e is CommandExecutor {
  return 'submit' in e && typeof e.submit === 'function';
}

/** How a command's attempts are made, for `retryInPlace`. */
export interface RetryLoop {
  readonly policy: RetryPolicy;
  readonly now: () => Date;
  /**
   * Before each attempt: `go`; `abandon` leaves the command where it stands; `expired`:
   * its settle-by time passed while it waited (for a hung call to return).
   */
  ready(settleBy: number | undefined): Promise<'go' | 'abandon' | 'expired'>;
  /** One attempt; `startedAt` is the command's first one. */
  attempt(startedAt: Date): Promise<Execution>;
  /** The backoff before the next attempt. */
  sleep(ms: number): Promise<void>;
  onRetry?(attempt: number, error: ErrorInfo, delayMs: number): void;
  /** The ticket could not settle (the bus is gone): the command is left to redelivery. */
  readonly onSettleError?: (err: unknown) => void;
}

/**
 * A command through its retries (CONTRACT §6): attempts with backoff until one ends in a
 * result or the budget is spent, then settled through the ticket. Only this run's
 * attempts count: deaths of earlier runs while running it are counted in its journal
 * record, by the machine. The ticket is read afresh at every step: a redelivery of the
 * command may have joined it (see `JoinableTicket`).
 */
export async function retryInPlace(ticket: CommandTicket, loop: RetryLoop): Promise<'settled' | 'abandoned'> {
  const { policy } = loop;
  const startedAt = loop.now();
  let attempts = 0;
  let error: ErrorInfo = { code: 'INTERNAL', message: 'not attempted', retryable: true };
  let last: Attempt | undefined;
  const giveUp = (why: ErrorInfo): Promise<'settled' | 'abandoned'> =>
    settle(ticket, { kind: 'exhausted', error: why, ...(last ? { attempt: last } : {}), attempts, startedAt, finishedAt: loop.now() }, loop.onSettleError);
  while (attempts <= policy.limit) {
    if (!ticket.live()) return 'abandoned';
    const ready = await loop.ready(ticket.settleBy);
    if (ready === 'abandon' || !ticket.live()) return 'abandoned';
    if (ready === 'expired') return giveUp(heldTooLong(attempts === 0 ? null : error));
    const e = await loop.attempt(startedAt);
    // A delivery that died meanwhile is not settled: the journal answers its redelivery.
    if (!ticket.live()) return 'abandoned';
    if (e.kind === 'result') return settle(ticket, e.replayed ? e : { ...e, startedAt }, loop.onSettleError);
    last = e.attempt ?? last;
    if (e.kind === 'poisoned') return giveUp(e.error);
    error = e.error;
    attempts += 1;
    if (attempts > policy.limit) break;
    const delayMs = backoffDelay(policy, attempts);
    // a backoff that would end past the settle-by time cannot lead anywhere: give up now
    if (ticket.settleBy !== undefined && loop.now().getTime() + delayMs >= ticket.settleBy) return giveUp(heldTooLong(error));
    loop.onRetry?.(attempts, error, delayMs);
    await loop.sleep(delayMs);
  }
  if (!ticket.live()) return 'abandoned';
  return giveUp(error);
}

/** The error of a command given up because it could not be settled in time; `last` null: never attempted. */
function heldTooLong(last: ErrorInfo | null): ErrorInfo {
  const why = last === null ? 'its drive stayed held by a call that has not returned' : `last error: ${last.message}`;
  return { code: 'TIMEOUT', message: `not done within the longest a delivery may be held (CDROM_MAX_HOLD_MS); ${why}`, retryable: true };
}

/** Backoff sleeps that a drain ends early. */
export class Backoffs {
  private readonly sleepers = new Set<() => void>();
  private woken = false;

  sleep(ms: number): Promise<void> {
    if (this.woken) return Promise.resolve();
    return new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(t);
        this.sleepers.delete(wake);
        resolve();
      };
      const t = setTimeout(wake, ms);
      this.sleepers.add(wake);
    });
  }

  /** Ends every sleep now and every later one at once. */
  wakeAll(): void {
    this.woken = true;
    for (const wake of [...this.sleepers]) wake();
  }
}

/**
 * A CommandExecutor over an AttemptExecutor: each drive's commands in order, each one
 * retried in place with backoff until it ends, settled inside its drive's turn.
 */
export function inPlace(inner: AttemptExecutor, policy: RetryPolicy, onRetry?: () => void): CommandExecutor {
  const tails = new Map<string, Promise<unknown>>();
  const backoffs = new Backoffs();
  let closed = false;
  return {
    submit(command, ticket) {
      const key = driveKey(command.vmId, command.drive);
      const loop: RetryLoop = {
        policy,
        now: () => new Date(),
        ready: () => Promise.resolve(closed ? 'abandon' : 'go'),
        attempt: () => inner.execute(command),
        sleep: (ms) => backoffs.sleep(ms),
        ...(onRetry ? { onRetry: () => onRetry() } : {}),
      };
      const run = (tails.get(key) ?? Promise.resolve()).then(() => retryInPlace(ticket, loop));
      const tail = run.catch(() => undefined);
      tails.set(key, tail);
      void tail.then(() => {
        if (tails.get(key) === tail) tails.delete(key);
      });
      return run;
    },
    async drain(timeoutMs) {
      closed = true;
      backoffs.wakeAll();
      await inner.drain(timeoutMs);
    },
  };
}

/** Settles through the ticket; a ticket that cannot (the bus is gone) leaves the command abandoned. */
async function settle(ticket: CommandTicket, final: FinalExecution, onError?: (err: unknown) => void): Promise<'settled' | 'abandoned'> {
  try {
    await ticket.settle(final);
    return 'settled';
  } catch (err) {
    onError?.(err);
    return 'abandoned';
  }
}

/** Exponential backoff with ±20 % jitter, so that retries of many commands do not align. */
export function backoffDelay(policy: RetryPolicy, attempt: number): number {
  const d = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return Math.round(d * (0.8 + Math.random() * 0.4));
}
