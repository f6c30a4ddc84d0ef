import { createActor, type Actor } from 'xstate';
import type { ChangeCdCommand } from '../contracts/schemas.js';
import { limiter } from '../domain/limiter.js';
import { driveKey } from '../domain/media.js';
import type { Execution } from '../domain/outcome.js';
import type { Logger } from '../domain/logger.js';
import type { Activities } from './cdrom.activities.js';
import { createCdromMachine, type CdromEvent, type CdromMachine, type Settlement } from './cdrom.machine.js';
import type { CommandExecutor } from './executor.js';

/**
 * One CD-ROM actor per (vmId, drive), created when a request for it arrives and stopped
 * when its queue runs dry, so memory follows the drives in flight, not every drive ever
 * seen. Requests for one drive run strictly one at a time in arrival order; different
 * drives run concurrently, at most `concurrency` at once.
 */

export interface RegistryOptions {
  readonly activities: Activities;
  readonly concurrency: number;
  readonly stepTimeoutMs: number;
  readonly log: Logger;
  readonly now?: () => Date;
  /**
   * How long an idle drive keeps its actor (a burst of commands for one drive then
   * pays for one actor); 0 stops it as soon as its queue runs dry.
   */
  readonly idleTtlMs?: number;
  /** At most this many idle actors are kept; beyond it the longest idle goes first. */
  readonly maxIdle?: number;
  /** called once per settled request, e.g. for metrics */
  readonly observe?: (event: { vmId: string; drive: string; settlement: Settlement; durationMs: number }) => void;
}

interface Job {
  /** built when the work begins, so that startedAt is then and not at enqueue time */
  readonly makeEvent: (startedAt: Date) => CdromEvent;
  readonly resolve: (s: { settlement: Settlement; startedAt: Date; finishedAt: Date }) => void;
}

interface Slot {
  readonly vmId: string;
  readonly drive: string;
  readonly queue: Job[];
  actor: Actor<CdromMachine> | null;
  running: boolean;
  idleSince: number;
}

export class DriveRegistry implements CommandExecutor {
  private readonly machine: CdromMachine;
  private readonly slots = new Map<string, Slot>();
  /** at most `concurrency` commands of all drives at once */
  private readonly limit: <T>(fn: () => Promise<T>) => Promise<T>;
  private closed = false;
  private readonly now: () => Date;
  private readonly log: Logger;
  private readonly idleTtlMs: number;
  private readonly maxIdle: number;
  /** idle slots, oldest first (Map order), for the count cap */
  private readonly idle = new Map<string, Slot>();
  private sweeper: NodeJS.Timeout | null = null;

  constructor(private readonly opts: RegistryOptions) {
    this.machine = createCdromMachine(opts.activities, { stepTimeoutMs: opts.stepTimeoutMs });
    this.limit = limiter(opts.concurrency);
    this.now = opts.now ?? (() => new Date());
    this.log = opts.log.child({ component: 'registry' });
    this.idleTtlMs = opts.idleTtlMs ?? 5_000;
    this.maxIdle = opts.maxIdle ?? 256;
  }

  async execute(command: ChangeCdCommand): Promise<Execution> {
    if (this.closed) {
      return { kind: 'retry', error: { code: 'INTERNAL', message: 'worker is shutting down', retryable: true } };
    }
    const ids = { commandId: command.commandId, vmId: command.vmId, drive: command.drive };
    const { settlement, startedAt, finishedAt } = await this.enqueue(command.vmId, command.drive, (startedAt) => ({
      type: 'EXECUTE',
      command,
      startedAt: startedAt.toISOString(),
    }));
    const durationMs = finishedAt.getTime() - startedAt.getTime();
    switch (settlement.kind) {
      case 'result': {
        const r = settlement.result;
        // The consumer logs the command's end at info (once, with its broker context).
        this.log.debug({ ...ids, outcome: r.outcome, action: r.action, replayed: settlement.replayed, durationMs, warnings: r.warnings.length > 0 ? r.warnings : undefined, err: r.error ?? undefined }, `changeCD ${r.outcome}`);
        return { kind: 'result', result: r, startedAt, finishedAt, replayed: settlement.replayed };
      }
      case 'retry':
        this.log.warn({ ...ids, err: settlement.error, durationMs }, 'changeCD will be retried');
        return { kind: 'retry', error: settlement.error, ...(settlement.attempt ? { attempt: settlement.attempt } : {}) };
      case 'recovered':
        // not produced for EXECUTE
        return { kind: 'retry', error: { code: 'INTERNAL', message: 'unexpected recovery settlement', retryable: true } };
    }
  }

  /** Reconcile one drive with what libvirt shows now, queued behind its commands. */
  async recover(vmId: string, drive: string): Promise<Settlement> {
    const { settlement } = await this.enqueue(vmId, drive, () => ({ type: 'RECOVER' }));
    return settlement;
  }

  async drain(timeoutMs: number): Promise<void> {
    this.closed = true;
    const deadline = Date.now() + timeoutMs;
    while (this.pending() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.reap(0);
  }

  /** Stop the actors of drives idle for `ttlMs` or longer. */
  reap(ttlMs: number = this.idleTtlMs): void {
    const cutoff = Date.now() - ttlMs;
    for (const [key, slot] of this.idle) {
      if (slot.idleSince > cutoff && this.idle.size <= this.maxIdle) break;
      this.stopIdle(key, slot);
    }
    if (this.slots.size === 0 && this.sweeper !== null) {
      clearInterval(this.sweeper);
      this.sweeper = null;
    }
  }

  private stopIdle(key: string, slot: Slot): void {
    slot.actor?.stop();
    this.idle.delete(key);
    this.slots.delete(key);
  }

  /** Drives with an actor alive now (in flight, queued, or idle and not yet reaped). */
  get liveDrives(): number {
    return this.slots.size;
  }

  private pending(): number {
    let n = 0;
    for (const s of this.slots.values()) n += s.queue.length + (s.running ? 1 : 0);
    return n;
  }

  private enqueue(vmId: string, drive: string, makeEvent: (startedAt: Date) => CdromEvent) {
    const key = driveKey(vmId, drive);
    let slot = this.slots.get(key);
    if (slot === undefined) {
      slot = { vmId, drive, queue: [], actor: null, running: false, idleSince: 0 };
      this.slots.set(key, slot);
    }
    this.idle.delete(key);
    const s = slot;
    return new Promise<{ settlement: Settlement; startedAt: Date; finishedAt: Date }>((resolve) => {
      s.queue.push({ makeEvent, resolve });
      if (!s.running) void this.pump(key, s);
    });
  }

  private async pump(key: string, slot: Slot): Promise<void> {
    slot.running = true;
    try {
      for (let job = slot.queue.shift(); job !== undefined; job = slot.queue.shift()) {
        const { makeEvent } = job;
        const done = await this.limit(async () => {
          const startedAt = this.now();
          const settlement = await this.run(slot, makeEvent(startedAt));
          const finishedAt = this.now();
          this.opts.observe?.({ vmId: slot.vmId, drive: slot.drive, settlement, durationMs: finishedAt.getTime() - startedAt.getTime() });
          return { settlement, startedAt, finishedAt };
        });
        // resolved here, so the bookkeeping below (idle or next job) runs before the caller resumes
        job.resolve(done);
      }
    } finally {
      slot.running = false;
      slot.idleSince = Date.now();
      if (slot.queue.length > 0) void this.pump(key, slot);
      else if (this.idleTtlMs === 0 || this.closed) this.stopIdle(key, slot);
      else {
        this.idle.set(key, slot);
        if (this.idle.size > this.maxIdle) this.reap();
        if (this.sweeper === null) {
          this.sweeper = setInterval(() => this.reap(), Math.max(50, this.idleTtlMs / 2));
          this.sweeper.unref();
        }
      }
    }
  }

  private run(slot: Slot, event: CdromEvent): Promise<Settlement> {
    if (slot.actor === null) {
      slot.actor = createActor(this.machine, { input: { vmId: slot.vmId, drive: slot.drive } });
      slot.actor.start();
    }
    const actor = slot.actor;
    return new Promise<Settlement>((resolve) => {
      const sub = actor.on('settled', (e) => {
        sub.unsubscribe();
        resolve(e.settlement);
      });
      actor.send(event);
    });
  }
}
