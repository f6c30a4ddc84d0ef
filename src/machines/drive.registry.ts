import { randomUUID } from 'node:crypto';
import { createActor, type Actor } from 'xstate';
import type { ChangeCdCommand } from '../contracts/schemas.js';
import type { ErrorInfo } from '../domain/errors.js';
import { SharedGate, limiter } from '../domain/limiter.js';
import type { Logger } from '../domain/logger.js';
import { commandKey, driveKey } from '../domain/media.js';
import type { Execution } from '../domain/outcome.js';
import { VolumeClaims } from '../domain/volume-claims.js';
import type { Activities } from './cdrom.activities.js';
import { createCdromMachine, type CdromEvent, type CdromMachine, type Settlement } from './cdrom.machine.js';
import { Backoffs, retryInPlace, type CommandExecutor, type CommandTicket, type RetryPolicy } from './executor.js';
import { Deadlines, StepRunner, type HungStep } from './step-runner.js';

/**
 * One CD-ROM actor per (vmId, drive), created when a request for it arrives and stopped
 * when its queue runs dry, so memory follows the drives in flight, not every drive ever
 * seen. Requests for one drive run strictly one at a time in arrival order; different
 * drives run concurrently, at most `concurrency` at once.
 *
 * A drive's line holds through faults (CONTRACT §4, §9):
 * - a command that must be retried keeps the head of its drive's line through its
 *   backoff (which holds no concurrency slot), so nothing queued behind it, command or
 *   recovery, overtakes it;
 * - a step that timed out may still land: the drive stays held until every call it
 *   started has returned, and is then reconciled with what libvirt shows (RECOVER)
 *   before anything else runs on it. Other drives are not affected;
 * - a command ends inside its turn: the next one starts after its event and ack;
 * - a redelivery of a command still in progress under a delivery that died joins it:
 *   the one execution carries on, and settles through the live delivery;
 * - a command an earlier worker run was running when it ended (a `suspect`) runs alone,
 *   so that a crash during it blames it and not the commands beside it (CONTRACT §9).
 */

export interface RegistryOptions {
  readonly activities: Activities;
  readonly concurrency: number;
  readonly stepTimeoutMs: number;
  readonly log: Logger;
  readonly now?: () => Date;
  /** Retries of a command after infrastructure trouble (CONTRACT §6); default 5, 1 s … 30 s. */
  readonly retry?: RetryPolicy;
  /**
   * Volumes in an unfinished change, per drive: claimed here for each command's media,
   * consulted by the activities' teardowns. Give both the same instance.
   */
  readonly claims?: VolumeClaims;
  /**
   * How long an idle drive keeps its actor (a burst of commands for one drive then
   * pays for one actor); 0 stops it as soon as its queue runs dry.
   */
  readonly idleTtlMs?: number;
  /** At most this many idle actors are kept; beyond it the longest idle goes first. */
  readonly maxIdle?: number;
  /** called once per settled request, e.g. for metrics */
  readonly observe?: (event: { vmId: string; drive: string; settlement: Settlement; durationMs: number }) => void;
  /** called before each retry's backoff, e.g. for metrics */
  readonly onRetry?: (event: { vmId: string; drive: string; commandId: string; attempt: number; error: ErrorInfo; delayMs: number }) => void;
  /** this worker run's id, recorded in the journal's pending records (default: random) */
  readonly runId?: string;
}

/** A command in its drive's line; a redelivery that joins it replaces `ticket` and `resolve`. */
interface CommandJob {
  readonly kind: 'command';
  readonly command: ChangeCdCommand;
  ticket: CommandTicket;
  resolve: (r: 'settled' | 'abandoned') => void;
}

type Job =
  | CommandJob
  | { readonly kind: 'once'; readonly command: ChangeCdCommand; readonly resolve: (e: Execution) => void }
  | { readonly kind: 'recover'; readonly resolve: (s: Settlement) => void };

interface Slot {
  readonly key: string;
  readonly vmId: string;
  readonly drive: string;
  readonly queue: Job[];
  actor: Actor<CdromMachine> | null;
  running: boolean;
  /** a step timed out or a command is to be retried: reconcile before the next command */
  dirty: boolean;
  idleSince: number;
}

const DEFAULT_RETRY: RetryPolicy = { limit: 5, baseDelayMs: 1_000, maxDelayMs: 30_000 };

export class DriveRegistry implements CommandExecutor {
  private readonly machine: CdromMachine;
  private readonly steps: StepRunner;
  private readonly slots = new Map<string, Slot>();
  /** at most `concurrency` commands of all drives at once */
  private readonly limit: <T>(fn: () => Promise<T>) => Promise<T>;
  private closed = false;
  /** resolves when drain begins: waits for a hung call or a backoff end there */
  private readonly closing: Promise<void>;
  private close!: () => void;
  private readonly now: () => Date;
  private readonly log: Logger;
  private readonly idleTtlMs: number;
  private readonly maxIdle: number;
  private readonly retry: RetryPolicy;
  readonly claims: VolumeClaims;
  /** idle slots, oldest first (Map order), for the count cap */
  private readonly idle = new Map<string, Slot>();
  private sweeper: NodeJS.Timeout | null = null;
  private hung = 0;
  private hungStorage = 0;
  private readonly backoffs = new Backoffs();
  /** commands queued or running, by drive and commandId: what a redelivery may join */
  private readonly commands = new Map<string, CommandJob>();
  /** shared turns for attempts and recoveries; a suspect's attempt takes an exclusive one */
  private readonly gate = new SharedGate();

  constructor(private readonly opts: RegistryOptions) {
    this.steps = new StepRunner(new Deadlines(opts.stepTimeoutMs), (h) => this.onHang(h));
    this.now = opts.now ?? (() => new Date());
    this.retry = opts.retry ?? DEFAULT_RETRY;
    this.machine = createCdromMachine(opts.activities, {
      stepTimeoutMs: opts.stepTimeoutMs,
      steps: this.steps,
      runId: opts.runId ?? randomUUID(),
      crashLimit: this.retry.limit,
      now: this.now,
    });
    this.limit = limiter(opts.concurrency);
    this.log = opts.log.child({ component: 'registry' });
    this.idleTtlMs = opts.idleTtlMs ?? 5_000;
    this.maxIdle = opts.maxIdle ?? 256;
    this.claims = opts.claims ?? new VolumeClaims();
    this.closing = new Promise((resolve) => (this.close = resolve));
  }

  /** Steps that outlived their deadline and whose call has not returned yet. */
  get hungCalls(): number {
    return this.hung;
  }

  /** Of those, the storage steps (prepare, teardown): libvirt counts its own hung calls. */
  get hungStorageCalls(): number {
    return this.hungStorage;
  }

  submit(command: ChangeCdCommand, ticket: CommandTicket): Promise<'settled' | 'abandoned'> {
    if (this.closed) return Promise.resolve('abandoned');
    const key = commandKey(command.vmId, command.drive, command.commandId);
    return new Promise((resolve) => {
      const running = this.commands.get(key);
      if (running !== undefined && !running.ticket.live()) {
        // Its delivery died (the broker connection was lost): this redelivery takes over
        // the execution in progress instead of starting a second one behind it.
        const orphaned = running.resolve;
        running.ticket = ticket;
        running.resolve = resolve;
        orphaned('abandoned');
        this.log.info({ commandId: command.commandId, vmId: command.vmId, drive: command.drive }, 'redelivery joins the command in progress');
        return;
      }
      const job: CommandJob = { kind: 'command', command, ticket, resolve: (r) => resolve(r) };
      // A live duplicate (the same commandId sent twice) queues behind, answered from the journal.
      if (running === undefined) this.commands.set(key, job);
      this.enqueue(command.vmId, command.drive, job);
    });
  }

  /** One attempt, without retries and without a ticket (tools, tests, benchmarks). */
  execute(command: ChangeCdCommand): Promise<Execution> {
    if (this.closed) {
      return Promise.resolve({ kind: 'retry', error: { code: 'INTERNAL', message: 'worker is shutting down', retryable: true } });
    }
    return new Promise((resolve) => this.enqueue(command.vmId, command.drive, { kind: 'once', command, resolve }));
  }

  /**
   * Reconcile one drive with what libvirt shows now, queued behind its commands. With
   * `skipIfHeld`, a drive held by a call that has not returned is skipped (it is
   * reconciled before its next command anyway), so a background pass never waits on it.
   */
  recover(vmId: string, drive: string, opts: { skipIfHeld?: boolean } = {}): Promise<Settlement> {
    // A pass still under way when the drain began queues nothing more.
    if (this.closed) return Promise.resolve({ kind: 'recovered', report: null, error: { code: 'INTERNAL', message: 'worker is shutting down', retryable: true } });
    const slot = this.slots.get(driveKey(vmId, drive));
    if (opts.skipIfHeld === true && slot?.actor != null && this.steps.busy(slot.actor)) {
      return Promise.resolve({ kind: 'recovered', report: null, error: { code: 'TIMEOUT', message: `${vmId}/${drive} is held by a call that has not returned; skipped`, retryable: true } });
    }
    return new Promise((resolve) => this.enqueue(vmId, drive, { kind: 'recover', resolve }));
  }

  async drain(timeoutMs: number): Promise<void> {
    this.closed = true;
    this.close();
    this.backoffs.wakeAll();
    // Not started: left to redelivery at once. Running: their attempt finishes (a step
    // that is running is never cut short), and no retry or backoff follows it.
    for (const slot of this.slots.values()) for (const job of slot.queue.splice(0)) this.abandon(job);
    const deadline = Date.now() + timeoutMs;
    while (this.pending() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    this.reap(0);
  }

  private abandon(job: Job): void {
    const shuttingDown: ErrorInfo = { code: 'INTERNAL', message: 'worker is shutting down', retryable: true };
    switch (job.kind) {
      case 'command':
        this.forget(job);
        job.resolve('abandoned');
        break;
      case 'once':
        job.resolve({ kind: 'retry', error: shuttingDown });
        break;
      case 'recover':
        job.resolve({ kind: 'recovered', report: null, error: shuttingDown });
        break;
    }
  }

  private forget(job: CommandJob): void {
    const key = commandKey(job.command.vmId, job.command.drive, job.command.commandId);
    if (this.commands.get(key) === job) this.commands.delete(key);
  }

  /** Stop the actors of drives idle for `ttlMs` or longer (never one with a call still out). */
  reap(ttlMs: number = this.idleTtlMs): void {
    const cutoff = Date.now() - ttlMs;
    for (const [key, slot] of this.idle) {
      if (slot.idleSince > cutoff && this.idle.size <= this.maxIdle) break;
      if (slot.actor !== null && this.steps.busy(slot.actor)) continue;
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
    this.claims.release(key);
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

  private enqueue(vmId: string, drive: string, job: Job): void {
    const key = driveKey(vmId, drive);
    let slot = this.slots.get(key);
    if (slot === undefined) {
      slot = { key, vmId, drive, queue: [], actor: null, running: false, dirty: false, idleSince: 0 };
      this.slots.set(key, slot);
    }
    this.idle.delete(key);
    slot.queue.push(job);
    if (!slot.running) void this.pump(slot);
  }

  private async pump(slot: Slot): Promise<void> {
    slot.running = true;
    try {
      for (let job = slot.queue.shift(); job !== undefined; job = slot.queue.shift()) {
        switch (job.kind) {
          case 'command': {
            const outcome = await this.runCommand(slot, job);
            this.forget(job);
            job.resolve(outcome);
            break;
          }
          case 'once':
            job.resolve(await this.runOnce(slot, job.command));
            break;
          case 'recover':
            job.resolve(await this.runRecover(slot));
            break;
        }
      }
    } finally {
      slot.running = false;
      slot.idleSince = Date.now();
      if (slot.queue.length > 0) void this.pump(slot);
      else this.goIdle(slot);
    }
  }

  private goIdle(slot: Slot): void {
    const actor = slot.actor;
    if (actor !== null && this.steps.busy(actor)) {
      // a hung call still holds the volume it may land with
      void this.steps.quiet(actor).then(() => {
        if (!slot.running && slot.queue.length === 0) this.claims.release(slot.key);
      });
    } else {
      this.claims.release(slot.key);
    }
    if (this.idleTtlMs === 0 || this.closed) {
      if (actor === null || !this.steps.busy(actor)) this.stopIdle(slot.key, slot);
      else this.idle.set(slot.key, slot);
      return;
    }
    this.idle.set(slot.key, slot);
    if (this.idle.size > this.maxIdle) this.reap();
    if (this.sweeper === null) {
      this.sweeper = setInterval(() => this.reap(), Math.max(50, this.idleTtlMs / 2));
      this.sweeper.unref();
    }
  }

  /** A command through its retries, at the head of its drive's line until it has ended. */
  private runCommand(slot: Slot, job: CommandJob): Promise<'settled' | 'abandoned'> {
    const { command } = job;
    const ids = { commandId: command.commandId, vmId: command.vmId, drive: command.drive };
    this.claims.claim(slot.key, command.media);
    // Whichever delivery holds the job now: a redelivery may join it at any step.
    const ticket: CommandTicket = {
      get settleBy() {
        return job.ticket.settleBy;
      },
      live: () => job.ticket.live(),
      settle: (final) => job.ticket.settle(final),
    };
    // A spent budget leaves the drive dirty: its next command reconciles it first.
    return retryInPlace(ticket, {
      policy: this.retry,
      now: this.now,
      ready: (settleBy) => this.ready(slot, settleBy),
      attempt: (startedAt) => this.attempt(slot, command, startedAt),
      sleep: (ms) => this.backoffs.sleep(ms),
      onRetry: (attempt, error, delayMs) => {
        this.log.warn({ ...ids, err: error, attempt, limit: this.retry.limit, retryInMs: delayMs }, 'command hit infrastructure trouble; retrying in place');
        this.opts.onRetry?.({ ...ids, attempt, error, delayMs });
      },
      // Only a lost bus fails a settle: the message stays unacknowledged and is redelivered.
      onSettleError: (err) => this.log.warn({ ...ids, err }, 'could not settle the command; it will be redelivered'),
    });
  }

  private async runOnce(slot: Slot, command: ChangeCdCommand): Promise<Execution> {
    if ((await this.ready(slot, undefined)) !== 'go') return { kind: 'retry', error: { code: 'INTERNAL', message: 'worker is shutting down', retryable: true } };
    return this.attempt(slot, command, this.now());
  }

  /** One attempt of a command on its drive; a retry leaves the drive to be reconciled. */
  private async attempt(slot: Slot, command: ChangeCdCommand, startedAt: Date, exclusive = false): Promise<Execution> {
    const t0 = this.now();
    const event: CdromEvent = { type: 'EXECUTE', command, startedAt: startedAt.toISOString(), ...(exclusive ? { exclusive } : {}) };
    const s = await this.gate.run(exclusive, () => this.limit(() => this.send(slot, event)));
    this.observe(slot, s, t0);
    const ids = { commandId: command.commandId, vmId: slot.vmId, drive: slot.drive };
    switch (s.kind) {
      case 'result':
        this.log.debug({ ...ids, outcome: s.result.outcome, action: s.result.action, replayed: s.replayed }, `changeCD ${s.result.outcome}`);
        return { kind: 'result', result: s.result, startedAt: new Date(s.startedAt), finishedAt: new Date(s.finishedAt), replayed: s.replayed };
      case 'retry':
        slot.dirty = true;
        return { kind: 'retry', error: s.error, ...(s.attempt ? { attempt: s.attempt } : {}) };
      case 'suspect':
        // Nothing was touched; the run is not an attempt.
        if (this.closed) return { kind: 'retry', error: { code: 'INTERNAL', message: 'worker is shutting down', retryable: true } };
        this.log.warn({ ...ids, deaths: s.deaths, limit: this.retry.limit }, 'an earlier worker run ended while running this command; running it alone');
        return this.attempt(slot, command, startedAt, true);
      case 'poisoned':
        this.log.error({ ...ids, err: s.error }, 'poison message: the worker keeps dying while running it; giving it up');
        return { kind: 'poisoned', error: s.error, attempt: s.attempt };
      case 'recovered':
        slot.dirty = true;
        return { kind: 'retry', error: { code: 'INTERNAL', message: 'unexpected recovery settlement', retryable: true } };
    }
  }

  private async runRecover(slot: Slot): Promise<Settlement> {
    if ((await this.quiet(slot, undefined)) !== 'quiet') return { kind: 'recovered', report: null, error: { code: 'INTERNAL', message: 'worker is shutting down', retryable: true } };
    const t0 = this.now();
    const s = await this.gate.run(false, () => this.limit(() => this.send(slot, { type: 'RECOVER' })));
    this.observe(slot, s, t0);
    if (s.kind === 'recovered' && s.error === null) slot.dirty = false;
    return s;
  }

  /**
   * Waits until nothing started on the drive can still land, then reconciles it if a
   * step failed or hung since its last reconciliation. `abandon` when the worker is
   * stopping, `expired` when `settleBy` passed first.
   */
  private async ready(slot: Slot, settleBy: number | undefined): Promise<'go' | 'abandon' | 'expired'> {
    for (;;) {
      if (this.closed) return 'abandon';
      const q = await this.quiet(slot, settleBy);
      if (q !== 'quiet') return q;
      if (!slot.dirty) return 'go';
      const s = await this.runRecover(slot);
      // A recovery that failed without hanging (libvirt unreachable, say) is left to the
      // command itself: its inspection recovers a recorded change first, and its own
      // failure is retried with backoff rather than here in a tight loop.
      if (s.kind === 'recovered' && s.error !== null && slot.actor !== null && !this.steps.busy(slot.actor)) return 'go';
    }
  }

  /** Resolves once no step of the drive is running, or when drain began or `settleBy` passed first. */
  private async quiet(slot: Slot, settleBy: number | undefined): Promise<'quiet' | 'abandon' | 'expired'> {
    const actor = slot.actor;
    if (actor === null || !this.steps.busy(actor)) return 'quiet';
    this.log.info({ vmId: slot.vmId, drive: slot.drive }, 'drive held until its hung call returns');
    let timer: NodeJS.Timeout | undefined;
    const waits: Promise<'quiet' | 'abandon' | 'expired'>[] = [this.steps.quiet(actor).then(() => 'quiet' as const), this.closing.then(() => 'abandon' as const)];
    if (settleBy !== undefined) waits.push(new Promise((resolve) => (timer = setTimeout(() => resolve('expired'), Math.max(0, settleBy - Date.now())))));
    const outcome = await Promise.race(waits);
    clearTimeout(timer);
    if (outcome === 'quiet') this.log.info({ vmId: slot.vmId, drive: slot.drive }, 'hung call returned; drive released');
    return outcome;
  }

  private observe(slot: Slot, settlement: Settlement, startedAt: Date): void {
    this.opts.observe?.({ vmId: slot.vmId, drive: slot.drive, settlement, durationMs: this.now().getTime() - startedAt.getTime() });
  }

  private onHang(h: HungStep): void {
    const { vmId, drive } = (h.actor.getSnapshot() as { context: { vmId: string; drive: string } }).context;
    const storage = h.step === 'prepareVolume' || h.step === 'teardownVolume';
    this.hung += 1;
    if (storage) this.hungStorage += 1;
    this.log.warn({ vmId, drive, call: h.what, timeoutMs: this.opts.stepTimeoutMs }, 'call hung: the drive is held until it returns');
    void h.settled.then(() => {
      this.hung -= 1;
      if (storage) this.hungStorage -= 1;
      this.log.info({ vmId, drive, call: h.what, durationMs: Date.now() - h.startedAt }, 'hung call returned');
    });
  }

  private send(slot: Slot, event: CdromEvent): Promise<Settlement> {
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
