import type { ChangeCdCommand } from '../contracts/schemas.js';
import type { Execution } from '../domain/outcome.js';

/**
 * What the bus needs from the machines: run one decoded command against its drive and
 * say how it ended. Commands for the same (vmId, drive) run one at a time in the order
 * `execute` was called; different drives run concurrently up to the configured limit.
 * Never rejects: every failure is an `Execution`.
 */
export interface CommandExecutor {
  execute(command: ChangeCdCommand): Promise<Execution>;
  /** Resolves when nothing is in flight; new `execute` calls are refused after this. */
  drain(timeoutMs: number): Promise<void>;
}
