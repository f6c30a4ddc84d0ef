import { SpanKind, SpanStatusCode, type Span } from '@opentelemetry/api';
import type { Channel, ConsumeMessage } from 'amqplib';
import { decodeCommand } from '../contracts/command.decode.js';
import type { ChangeCdCommand } from '../contracts/schemas.js';
import type { RetryConfig } from '../config.js';
import type { ErrorInfo } from '../domain/errors.js';
import type { UnackedCommands } from '../domain/unacked-commands.js';
import { NO_FAILPOINTS, type Failpoints } from '../infra/failpoints.js';
import type { Logger } from '../infra/logging.js';
import type { Metrics } from '../infra/metrics.js';
import { NO_TRACING, recordFailure, type Tracing } from '../infra/tracing.js';
import type { CommandExecutor } from '../machines/executor.js';
import type { Bus, BusSession } from './connection.js';
import { EventPublisher, exhaustedEvent, rejectedEvent, resultEvent, type ReplyTarget } from './events.publisher.js';
import { HostLock } from './host-lock.js';
import { deadLetterOptions, optString } from './message-props.js';
import { senderOf, unauthorizedSender } from './sender.js';
import { DEAD_EXCHANGE, commandsQueue, ensureTopology } from './topology.js';

export interface CommandConsumerDeps {
  readonly bus: Bus;
  readonly hostId: string;
  /** deliveries held unacknowledged at once (AMQP prefetch), above the concurrency */
  readonly prefetch: number;
  /** the longest a delivery may be held before it must be settled (below the broker's consumer_timeout) */
  readonly maxHoldMs: number;
  readonly declareTopology: boolean;
  readonly executor: CommandExecutor;
  readonly retry: RetryConfig;
  readonly logger: Logger;
  readonly failpoints?: Failpoints;
  readonly metrics?: Metrics;
  /** commands held unacknowledged: their journal records are kept (shared with the activities) */
  readonly unacked?: UnackedCommands;
  /** Called after every (re)attach of the consumer. */
  readonly onAttached?: () => void;
  /** Runs once this worker holds the host, before it consumes (startup recovery); a failure drops the connection. */
  readonly activate?: () => Promise<void>;
  /** Called when this worker waits as the standby of another one for the same host. */
  readonly onStandby?: () => void;
  /** How often a standby tries to take over; default 2 s. */
  readonly standbyPollMs?: number;
  /** CDROM_TRUSTED_SENDERS: broker users whose commands are run; null or absent: anyone's. */
  readonly trustedSenders?: readonly string[] | null;
  /** One CONSUMER span per delivery, continuing the sender's trace; default: off. */
  readonly tracing?: Tracing;
}

/** `ack`: acknowledge now; `done`: already acknowledged; `leave`: left for redelivery. */
type Settle = 'ack' | 'done' | 'leave';

/**
 * Consumes `cdrom.commands.<hostId>`: decode → execute → event (confirmed) → ack.
 * A message is never acked before everything it needs is confirmed; anything that goes
 * wrong before the ack leaves it unacked, so the broker redelivers it and the executor
 * answers the repeat from its journal.
 */
export class CommandConsumer {
  private readonly log: Logger;
  private readonly events: EventPublisher;
  private readonly failpoints: Failpoints;
  private stopping = false;
  private consumer: { channel: Channel; tag: string; session: BusSession } | null = null;
  private inFlight = 0;
  private idleWaiters: Array<() => void> = [];

  private readonly lock: HostLock;
  private readonly tracing: Tracing;

  constructor(private readonly deps: CommandConsumerDeps) {
    this.log = deps.logger.child({ component: 'commands-consumer' });
    this.events = new EventPublisher(deps.bus, deps.hostId, { logger: deps.logger, metrics: deps.metrics });
    this.failpoints = deps.failpoints ?? NO_FAILPOINTS;
    this.lock = new HostLock(deps.hostId, this.log, deps.standbyPollMs ?? 2000);
    this.tracing = deps.tracing ?? NO_TRACING;
  }

  /**
   * Declares the topology and, once this worker holds the host lock, attaches the
   * consumer; again after every reconnect. Until it holds the lock it is the standby.
   */
  attach(): void {
    this.deps.bus.addSetup(async (session) => {
      const ch = await session.openChannel();
      await ensureTopology(ch, this.deps.hostId, this.deps.declareTopology);
      if (this.stopping) return;
      // Not awaited: the session serves publishes while this worker waits as the standby.
      void this.lock
        .acquire(session, () => this.stopping, () => this.deps.onStandby?.())
        .then(async (held) => {
          if (!held || this.stopping || !session.alive) return;
          await this.deps.activate?.();
          if (this.stopping || !session.alive) return;
          await ch.prefetch(this.deps.prefetch);
          // While events are not being confirmed (a nack, a refusal), new commands are not
          // taken: they would only be requeued at the next reconnect. Until then not ready.
          await this.deps.bus.whenPublishing(session, async () => {
            if (this.stopping || !session.alive) return;
            const { consumerTag } = await ch.consume(commandsQueue(this.deps.hostId), (msg) => this.onMessage(session, ch, msg), { noAck: false });
            this.consumer = { channel: ch, tag: consumerTag, session };
            this.log.info({ queue: commandsQueue(this.deps.hostId), prefetch: this.deps.prefetch, generation: session.generation }, 'consumer attached');
            this.deps.onAttached?.();
          });
        })
        .catch((err: unknown) => this.deps.bus.fail(session, err));
    });
  }

  get busy(): number {
    return this.inFlight;
  }

  /**
   * Stop taking new messages; messages waiting for a retry are left to be redelivered. The
   * host lock stays held until the connection closes, after the drain: a standby must not
   * start this host's next commands while ours still run.
   */
  async stop(): Promise<void> {
    this.stopping = true;
    this.lock.stop();
    const c = this.consumer;
    this.consumer = null;
    if (c && c.session.alive) await c.channel.cancel(c.tag).catch(() => undefined);
  }

  /** Resolves when no message is being handled, or after `timeoutMs`. */
  idle(timeoutMs: number): Promise<boolean> {
    if (this.inFlight === 0) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => resolve(false), timeoutMs);
      this.idleWaiters.push(() => {
        clearTimeout(t);
        resolve(true);
      });
    });
  }

  private onMessage(session: BusSession, ch: Channel, msg: ConsumeMessage | null): void {
    if (msg === null) {
      // The broker cancelled us (queue deleted or failed over): start over on a new connection.
      this.deps.bus.fail(session, new Error('consumer cancelled by the broker'));
      return;
    }
    if (this.stopping) return; // not acked: the broker redelivers it
    this.inFlight++;
    this.deps.metrics?.inFlight.inc();
    const span = this.tracing.enabled ? this.startSpan(msg) : null;
    this.handle(session, ch, msg, span)
      .then((settle) => {
        if (settle === 'ack') this.ack(session, ch, msg);
        if (settle === 'leave') span?.setAttribute('cdrom.settlement', 'abandoned');
      })
      .catch((err: unknown) => {
        // Only a closed bus gets here: the message stays unacked and is redelivered.
        this.log.warn({ err }, 'message left unacknowledged');
        if (span !== null) recordFailure(span, err);
      })
      .finally(() => {
        span?.end();
        this.inFlight--;
        this.deps.metrics?.inFlight.dec();
        if (this.inFlight === 0) {
          const w = this.idleWaiters;
          this.idleWaiters = [];
          for (const f of w) f();
        }
      });
  }

  /**
   * The delivery's CONSUMER span (messaging semantic conventions, RabbitMQ), child of the
   * trace context the sender put in the headers. It stays open until the ack (or until
   * the delivery is abandoned), through every retry of the command.
   */
  private startSpan(msg: ConsumeMessage): Span {
    const exchange = msg.fields.exchange;
    const queue = commandsQueue(this.deps.hostId);
    const messageId = optString(msg.properties.messageId);
    const correlationId = optString(msg.properties.correlationId);
    const parent = this.tracing.extract(msg.properties.headers);
    return this.tracing.tracer.startSpan(
      `process ${exchange === '' ? queue : exchange}`,
      {
        kind: SpanKind.CONSUMER,
        attributes: {
          'messaging.system': 'rabbitmq',
          'messaging.operation.type': 'process',
          'messaging.operation.name': 'process',
          // the name before semconv 1.26, still what many backends group by
          'messaging.operation': 'process',
          'messaging.destination.name': exchange,
          'messaging.destination.subscription.name': queue,
          'messaging.rabbitmq.destination.routing_key': msg.fields.routingKey,
          'messaging.rabbitmq.message.delivery_tag': msg.fields.deliveryTag,
          'messaging.message.body.size': msg.content.length,
          ...(messageId !== undefined ? { 'messaging.message.id': messageId } : {}),
          ...(correlationId !== undefined ? { 'messaging.message.conversation_id': correlationId } : {}),
          ...(msg.fields.redelivered ? { 'cdrom.redelivered': true } : {}),
          'cdrom.host_id': this.deps.hostId,
        },
      },
      parent,
    );
  }

  /** True when the ack went out on the delivery's live channel. */
  private ack(session: BusSession, ch: Channel, msg: ConsumeMessage): boolean {
    if (!session.alive) {
      // The delivery tag died with its channel; the broker redelivers the message and
      // the executor answers the repeat from its journal.
      this.log.info({ deliveryTag: msg.fields.deliveryTag }, 'connection lost before the ack; message will be redelivered');
      return false;
    }
    try {
      ch.ack(msg);
      return true;
    } catch (err) {
      this.log.warn({ err }, 'ack failed; message will be redelivered');
      return false;
    }
  }

  private async handle(session: BusSession, ch: Channel, msg: ConsumeMessage, span: Span | null): Promise<Settle> {
    const reply: ReplyTarget = { replyTo: optString(msg.properties.replyTo), correlationId: optString(msg.properties.correlationId) };
    // CONTRACT §3 v1.1: who sent it is checked first, whatever the body says.
    const decoded = unauthorizedSender(msg, this.deps.trustedSenders ?? null) ?? decodeCommand(msg.content);
    if (!decoded.ok) {
      const { rejection } = decoded;
      this.log.warn({ commandId: rejection.ids.commandId, vmId: rejection.ids.vmId, drive: rejection.ids.drive, code: rejection.code, sender: senderOf(msg.properties), field: rejection.field, reason: rejection.message }, 'command rejected');
      // An untrusted sender's reply_to is not followed: the worker would write, as itself,
      // into whatever queue it names.
      const answer = rejection.code === 'UNAUTHORIZED_SENDER' ? { correlationId: reply.correlationId } : reply;
      if (span !== null) {
        // only ids the decoder found valid: an untrusted body's claims are not recorded as facts
        if (rejection.ids.commandId !== null && rejection.code !== 'UNAUTHORIZED_SENDER') span.setAttribute('cdrom.command_id', rejection.ids.commandId);
        span.setAttributes({ 'cdrom.outcome': 'rejected', 'cdrom.dead_lettered': true, 'error.type': rejection.code });
        span.setStatus({ code: SpanStatusCode.ERROR, message: rejection.code });
      }
      await Promise.all([
        this.events.publish(rejectedEvent(this.deps.hostId, rejection, new Date()), answer, span === null ? undefined : this.tracing.inject(span)),
        this.deadLetter(msg, { code: rejection.code, message: rejection.message, retryable: false }),
      ]);
      this.deps.metrics?.commands.inc({ outcome: 'rejected', action: 'none' });
      this.deps.metrics?.deadLettered.inc({ reason: 'rejected' });
      return 'ack';
    }
    const { command } = decoded;
    this.deps.unacked?.delivered(command.commandId);
    if (span !== null) {
      span.setAttributes({ 'cdrom.command_id': command.commandId, 'cdrom.vm_id': command.vmId, 'cdrom.drive': command.drive, 'cdrom.media': mediaKind(command.media) });
      // The steps find the span through the command's drive (tracing.ts, CommandSpans).
      this.tracing.commands.begin(command.vmId, command.drive, command.commandId, span);
    }
    try {
      const settle = await this.run(command, msg, reply, session, ch, span);
      if (settle === 'leave') this.deps.unacked?.abandoned(command.commandId);
      return settle;
    } finally {
      if (span !== null) this.tracing.commands.end(command.vmId, command.drive, command.commandId, span);
    }
  }

  /**
   * Hands the command to its drive's line. The executor retries it in place and calls
   * `settle` inside the drive's turn: the event (confirmed), the dead letter when the
   * budget is spent, then the ack, so the drive's next command starts only after all that.
   */
  private async run(cmd: ChangeCdCommand, msg: ConsumeMessage, reply: ReplyTarget, session: BusSession, ch: Channel, span: Span | null): Promise<Settle> {
    // bound per call, not with a child logger per command (a child serialises its bindings up front)
    const ids = { commandId: cmd.commandId, vmId: cmd.vmId, drive: cmd.drive };
    const outcome = await this.deps.executor.submit(cmd, {
      settleBy: Date.now() + this.deps.maxHoldMs,
      // Stopping does not end a delivery: a running attempt's result is still settled.
      live: () => session.alive,
      settle: async (final) => {
        const headers = span === null ? undefined : this.tracing.inject(span);
        if (final.kind === 'result') {
          const r = final.result;
          if (span !== null) {
            span.setAttributes({ 'cdrom.outcome': r.outcome, 'cdrom.action': r.action, 'cdrom.replayed': final.replayed });
            if (r.error !== null) {
              span.setAttribute('error.type', r.error.code);
              span.setStatus({ code: SpanStatusCode.ERROR, message: r.error.code });
            }
          }
          await this.events.publish(resultEvent(this.deps.hostId, cmd, r, final.startedAt, final.finishedAt), reply, headers);
          this.log.info(
            { ...ids, outcome: r.outcome, action: r.action, replayed: final.replayed, durationMs: final.finishedAt.getTime() - final.startedAt.getTime(), warnings: r.warnings.length > 0 ? r.warnings : undefined, err: r.error ?? undefined },
            'command finished',
          );
          this.deps.metrics?.commands.inc({ outcome: r.outcome, action: r.action });
        } else {
          this.log.error({ ...ids, err: final.error, attempts: final.attempts, limit: this.deps.retry.limit }, 'command given up; dead-lettering');
          if (span !== null) {
            span.setAttributes({ 'cdrom.outcome': 'failed', 'cdrom.action': final.attempt?.action ?? 'none', 'cdrom.dead_lettered': true, 'cdrom.attempts': final.attempts, 'error.type': final.error.code });
            span.setStatus({ code: SpanStatusCode.ERROR, message: final.error.code });
          }
          await Promise.all([
            this.events.publish(exhaustedEvent(this.deps.hostId, cmd, final.error, final.startedAt, final.finishedAt, final.attempt), reply, headers),
            this.deadLetter(msg, final.error),
          ]);
          this.deps.metrics?.commands.inc({ outcome: 'failed', action: final.attempt?.action ?? 'none' });
          this.deps.metrics?.deadLettered.inc({ reason: 'retries-exhausted' });
        }
        this.failpoints.after('before-ack', cmd.vmId);
        if (!this.ack(session, ch, msg)) throw new Error('the delivery died before its ack; it will be redelivered');
        this.deps.unacked?.acked(cmd.commandId);
      },
    });
    // settled: acked inside the turn; abandoned: left unacked for redelivery
    return outcome === 'settled' ? 'done' : 'leave';
  }

  /** The original message, body and properties unchanged, plus why (and who sent it), to cdrom.dead. */
  private deadLetter(msg: ConsumeMessage, error: ErrorInfo): Promise<void> {
    return this.deps.bus.publish(DEAD_EXCHANGE, this.deps.hostId, msg.content, deadLetterOptions(msg.properties, error));
  }
}

function mediaKind(media: ChangeCdCommand['media']): string {
  if (media === null) return 'eject';
  return 'path' in media ? 'path' : 'pdiv';
}
