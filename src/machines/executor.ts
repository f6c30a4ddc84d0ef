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

/** How a command ended for good: its result, or its retry budget spent. */
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
  /** Deliveries of this message that ended without an outcome; they count against the budget. */
  readonly priorAttempts: number;
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
  /** Resolves once the command is settled (through its ticket) or abandoned. Never rejects. */
  submit(command: ChangeCdCommand, ticket: CommandTicket): Promise<'settled' | 'abandoned'>;
  /** Resolves when nothing is in flight; new commands are refused after this. */
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
  /** Before each attempt; false abandons the command where it stands. */
  ready(): Promise<boolean>;
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
 * result or the budget is spent, then settled through the ticket. Deliveries that ended
 * without an outcome (a crash, a lost broker) count against the budget.
 */
export async function retryInPlace(ticket: CommandTicket, loop: RetryLoop): Promise<'settled' | 'abandoned'> {
  const { policy } = loop;
  const startedAt = loop.now();
  let attempts = ticket.priorAttempts;
  let error: ErrorInfo = { code: 'INTERNAL', message: `delivered ${attempts} times without an outcome (worker crashed or lost the broker)`, retryable: true };
  let last: Attempt | undefined;
  while (attempts <= policy.limit) {
    if (!ticket.live() || !(await loop.ready())) return 'abandoned';
    const e = await loop.attempt(startedAt);
    if (e.kind === 'result') return settle(ticket, { ...e, startedAt }, loop.onSettleError);
    error = e.error;
    last = e.attempt ?? last;
    attempts += 1;
    if (attempts > policy.limit) break;
    if (!ticket.live()) return 'abandoned';
    const delayMs = backoffDelay(policy, attempts);
    loop.onRetry?.(attempts, error, delayMs);
    await loop.sleep(delayMs);
  }
  if (!ticket.live()) return 'abandoned';
  return settle(ticket, { kind: 'exhausted', error, ...(last ? { attempt: last } : {}), attempts, startedAt, finishedAt: loop.now() }, loop.onSettleError);
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
        ready: () => Promise.resolve(!closed),
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
