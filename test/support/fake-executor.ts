import { appendFileSync, existsSync, readFileSync } from 'node:fs';
import type { ChangeCdCommand } from '../../src/contracts/schemas.js';
import type { ErrorCode } from '../../src/domain/errors.js';
import { sameMedia, driveKey, type Media } from '../../src/domain/media.js';
import { actionFor, type ChangeResult, type Execution } from '../../src/domain/outcome.js';
import type { AttemptExecutor } from '../../src/machines/executor.js';

/**
 * A small stateful stand-in for the per-drive registry: drives hold media, a command id
 * is answered from a journal the second time, and the outcome of a command can be
 * scripted by the test. With `recordFile` every start and finish is appended as a JSON
 * line and the journal is reloaded from it, so it survives a killed worker process.
 */

export type Script =
  | { readonly kind: 'complete' }
  | { readonly kind: 'fail'; readonly code: ErrorCode }
  | { readonly kind: 'retry'; readonly code: ErrorCode };

/**
 * The drive changes an executor made, counted apart from the journal that decides whether
 * a command is a repeat: a test that counts effects from here checks that journal's
 * decisions instead of restating them (a repeat answered `replayed` but run again, or a
 * command answered `completed` but never run, both show here).
 */
export class EffectLog {
  private readonly counts = new Map<string, number>();

  record(commandId: string): void {
    this.counts.set(commandId, (this.counts.get(commandId) ?? 0) + 1);
  }

  count(commandId: string): number {
    return this.counts.get(commandId) ?? 0;
  }
}

export interface FakeExecutorOptions {
  /** How long one execution takes. */
  readonly delayMs?: number;
  /** Where each drive change is counted (once per change, however it was answered). */
  readonly effects?: EffectLog;
  readonly recordFile?: string;
  /** The outcome of a command; default: complete. */
  readonly script?: (cmd: ChangeCdCommand, attempt: number) => Script;
}

interface Record {
  readonly phase: 'start' | 'done';
  readonly commandId: string;
  readonly pid: number;
  readonly at: number;
  readonly result?: ChangeResult;
  readonly media?: Media | null;
  readonly drive?: string;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class FakeExecutor implements AttemptExecutor {
  readonly drives = new Map<string, Media | null>();
  readonly journal = new Map<string, ChangeResult>();
  readonly calls: Array<{ commandId: string; at: number }> = [];
  private readonly attempts = new Map<string, number>();
  private inFlight = 0;
  private draining = false;
  /** Per-drive queue: commands for one drive run in call order. */
  private readonly tails = new Map<string, Promise<unknown>>();

  constructor(private readonly options: FakeExecutorOptions = {}) {
    const file = options.recordFile;
    if (file !== undefined && existsSync(file)) {
      for (const line of readFileSync(file, 'utf8').split('\n').filter(Boolean)) {
        const r = JSON.parse(line) as Record;
        if (r.phase === 'done' && r.result && r.drive !== undefined) {
          this.journal.set(r.commandId, r.result);
          this.drives.set(r.drive, r.result.current);
        }
      }
    }
  }

  execute(cmd: ChangeCdCommand): Promise<Execution> {
    if (this.draining) return Promise.resolve({ kind: 'retry', error: { code: 'INTERNAL', message: 'draining', retryable: true } });
    const key = driveKey(cmd.vmId, cmd.drive);
    const run = (this.tails.get(key) ?? Promise.resolve()).then(() => this.run(cmd, key));
    this.tails.set(key, run.catch(() => undefined));
    return run;
  }

  private async run(cmd: ChangeCdCommand, key: string): Promise<Execution> {
    this.inFlight++;
    try {
      const startedAt = new Date();
      this.calls.push({ commandId: cmd.commandId, at: startedAt.getTime() });
      const known = this.journal.get(cmd.commandId);
      if (known) return { kind: 'result', result: known, startedAt, finishedAt: new Date(), replayed: true };
      const attempt = (this.attempts.get(cmd.commandId) ?? 0) + 1;
      this.attempts.set(cmd.commandId, attempt);
      this.record({ phase: 'start', commandId: cmd.commandId, pid: process.pid, at: Date.now() });
      if (this.options.delayMs) await sleep(this.options.delayMs);
      const script = this.options.script?.(cmd, attempt) ?? { kind: 'complete' };
      const previous = this.drives.get(key) ?? null;
      const requested = cmd.media;
      const same = sameMedia(previous, requested);
      const action = actionFor(previous, requested, same);
      if (script.kind === 'retry') return { kind: 'retry', error: { code: script.code, message: `scripted ${script.code}`, retryable: true } };
      const result: ChangeResult =
        script.kind === 'fail'
          ? { outcome: 'failed', action, previous, current: previous, warnings: [], error: { code: script.code, message: `scripted ${script.code}`, retryable: false } }
          : { outcome: 'completed', action, previous, current: requested, warnings: [], error: null };
      if (!sameMedia(previous, result.current)) this.options.effects?.record(cmd.commandId);
      this.drives.set(key, result.current);
      this.journal.set(cmd.commandId, result);
      this.record({ phase: 'done', commandId: cmd.commandId, pid: process.pid, at: Date.now(), result, drive: key });
      return { kind: 'result', result, startedAt, finishedAt: new Date(), replayed: false };
    } finally {
      this.inFlight--;
    }
  }

  async drain(timeoutMs: number): Promise<void> {
    this.draining = true;
    const until = Date.now() + timeoutMs;
    while (this.inFlight > 0 && Date.now() < until) await sleep(5);
  }

  private record(r: Record): void {
    if (this.options.recordFile !== undefined) appendFileSync(this.options.recordFile, `${JSON.stringify(r)}\n`);
  }
}

/** Reads a record file written by FakeExecutor. */
export function readRecords(file: string): Record[] {
  if (!existsSync(file)) return [];
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => JSON.parse(l) as Record);
}
