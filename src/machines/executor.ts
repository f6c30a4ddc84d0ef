import type { ChangeCdCommand } from '../contracts/schemas.js';
import type { ErrorInfo } from '../domain/errors.js';
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
 * Commands for the same (vmId, drive) run one at a time in the order `run` was called,
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

/**
 * A CommandExecutor over an AttemptExecutor: each drive's commands in order, each one
 * retried in place with backoff until it ends, settled inside its drive's turn.
 */
export function inPlace(inner: AttemptExecutor, policy: RetryPolicy, onRetry?: () => void): CommandExecutor {
  const tails = new Map<string, Promise<unknown>>();
  const wakers = new Set<() => void>();
  let closed = false;
  const sleep = (ms: number): Promise<void> =>
    new Promise((resolve) => {
      const wake = (): void => {
        clearTimeout(t);
        wakers.delete(wake);
        resolve();
      };
      const t = setTimeout(wake, ms);
      wakers.add(wake);
    });
  const attempt = async (command: ChangeCdCommand, ticket: CommandTicket): Promise<'settled' | 'abandoned'> => {
    const startedAt = new Date();
    let attempts = ticket.priorAttempts;
    let error: ErrorInfo = { code: 'INTERNAL', message: `delivered ${attempts} times without an outcome (worker crashed or lost the broker)`, retryable: true };
    let last: Attempt | undefined;
    while (attempts <= policy.limit) {
      if (closed || !ticket.live()) return 'abandoned';
      const e = await inner.execute(command);
      if (e.kind === 'result') return settle(ticket, { ...e, startedAt });
      error = e.error;
      last = e.attempt ?? last;
      attempts += 1;
      if (attempts <= policy.limit) {
        onRetry?.();
        await sleep(backoffDelay(policy, attempts));
      }
    }
    if (closed || !ticket.live()) return 'abandoned';
    return settle(ticket, { kind: 'exhausted', error, ...(last ? { attempt: last } : {}), attempts, startedAt, finishedAt: new Date() });
  };
  return {
    submit(command, ticket) {
      const key = `${command.vmId.toLowerCase()}/${command.drive}`;
      const run = (tails.get(key) ?? Promise.resolve()).then(() => attempt(command, ticket));
      const tail = run.catch(() => undefined);
      tails.set(key, tail);
      void tail.then(() => {
        if (tails.get(key) === tail) tails.delete(key);
      });
      return run;
    },
    async drain(timeoutMs) {
      closed = true;
      for (const wake of [...wakers]) wake();
      await inner.drain(timeoutMs);
    },
  };
}

/** Settles through the ticket; a ticket that cannot (the bus is gone) leaves the command abandoned. */
export async function settle(ticket: CommandTicket, final: FinalExecution, onError?: (err: unknown) => void): Promise<'settled' | 'abandoned'> {
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
