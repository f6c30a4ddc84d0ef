import { randomUUID } from 'node:crypto';
import type { Options } from 'amqplib';
import type { ChangeCdCommand, ResultEvent } from '../contracts/schemas.js';
import type { Rejection } from '../contracts/command.decode.js';
import type { ErrorInfo } from '../domain/errors.js';
import type { Attempt, ChangeResult, ResultOutcome } from '../domain/outcome.js';
import type { Logger } from '../infra/logging.js';
import type { Metrics } from '../infra/metrics.js';
import type { Bus } from './connection.js';
import { ReplyPublisher } from './reply.publisher.js';
import { EVENTS_EXCHANGE, eventRoutingKey } from './topology.js';

/** Where the sender asked for a copy of the result (AMQP reply_to + correlation_id). */
export interface ReplyTarget {
  readonly replyTo?: string | undefined;
  readonly correlationId?: string | undefined;
}

function envelope(outcome: ResultOutcome, hostId: string, startedAt: Date, finishedAt: Date) {
  const durationMs = Math.max(0, finishedAt.getTime() - startedAt.getTime());
  return {
    type: `changeCD.${outcome}` as const,
    version: 1 as const,
    hostId,
    startedAt: startedAt.toISOString(),
    // finishedAt is derived so that durationMs = finishedAt − startedAt holds exactly.
    finishedAt: new Date(startedAt.getTime() + durationMs).toISOString(),
    durationMs,
  };
}

/** CONTRACT.md section 4 for an executed command (completed or failed). */
export function resultEvent(hostId: string, cmd: ChangeCdCommand, result: ChangeResult, startedAt: Date, finishedAt: Date): ResultEvent {
  return {
    ...envelope(result.outcome, hostId, startedAt, finishedAt),
    commandId: cmd.commandId,
    vmId: cmd.vmId,
    drive: cmd.drive,
    action: result.action,
    previous: result.previous,
    current: result.current,
    warnings: result.warnings.map((w) => ({ code: w.code, message: w.message })),
    error: result.error === null ? null : { ...result.error },
  };
}

/** A command that could not be understood: only the ids that are valid are named. */
export function rejectedEvent(hostId: string, rejection: Rejection, at: Date): ResultEvent {
  return {
    ...envelope('rejected', hostId, at, at),
    commandId: rejection.ids.commandId,
    vmId: rejection.ids.vmId,
    drive: rejection.ids.drive,
    // Nothing was done; `none` keeps `action` within the contract's four values.
    action: 'none',
    previous: null,
    current: null,
    warnings: [],
    error: { code: rejection.code, message: rejection.message, retryable: false },
  };
}

/**
 * A command given up: its retry budget ran out, it could not be done within the longest
 * hold, or it is poison. `action` is the one attempted (as far as the machine got to know
 * it; else what the media asks for), `previous`/`current` what the drive held when it was
 * last seen, null when never seen.
 */
export function exhaustedEvent(hostId: string, cmd: ChangeCdCommand, error: ErrorInfo, startedAt: Date, finishedAt: Date, attempt?: Attempt): ResultEvent {
  return {
    ...envelope('failed', hostId, startedAt, finishedAt),
    commandId: cmd.commandId,
    vmId: cmd.vmId,
    drive: cmd.drive,
    action: attempt?.action ?? (cmd.media === null ? 'eject' : 'load'),
    previous: attempt?.previous ?? null,
    current: attempt?.current ?? null,
    warnings: [],
    error: { code: error.code, message: error.message, retryable: error.retryable },
  };
}

export function outcomeOf(event: ResultEvent): ResultOutcome {
  return event.type.slice('changeCD.'.length) as ResultOutcome;
}

/**
 * The AMQP properties of an event, for both copies. message_id is the commandId, so a
 * consumer can recognise a repeat (redelivery, re-send: the same commandId answers with
 * the same event). An event with no valid commandId (some rejections) gets one of its
 * own, and so does an UNAUTHORIZED_SENDER rejection: its commandId is only what an
 * untrusted body claims, and with the real command's id as message_id it would make a
 * consumer that drops repeats by message_id drop the real command's event. user_id is
 * not set here: the bus sets the session's user on every attempt.
 */
export function eventProperties(event: ResultEvent, reply: ReplyTarget = {}, now: Date = new Date()): Options.Publish {
  const trusted = event.error?.code !== 'UNAUTHORIZED_SENDER';
  return {
    persistent: true,
    contentType: 'application/json',
    messageId: (trusted ? event.commandId : null) ?? randomUUID(),
    timestamp: Math.floor(now.getTime() / 1000),
    type: event.type,
    appId: 'cdrom-worker',
    ...(reply.correlationId ? { correlationId: reply.correlationId } : {}),
  };
}

export interface EventPublisherOptions {
  readonly logger: Logger;
  readonly metrics?: Pick<Metrics, 'replyCopiesFailed'> | undefined;
}

/** Publishes result events (persistent JSON) with confirms, plus the reply_to copy. */
export class EventPublisher {
  private readonly replies: ReplyPublisher;

  constructor(
    private readonly bus: Bus,
    private readonly hostId: string,
    options: EventPublisherOptions,
  ) {
    this.replies = new ReplyPublisher(bus, options.logger, options.metrics);
  }

  /**
   * Resolves once the `cdrom.events` copy is confirmed by the broker. The reply_to copy
   * goes out alongside, best effort: it is neither waited for nor retried
   * (reply.publisher.ts), so it never delays or fails the ack. `headers` go on both copies.
   */
  async publish(event: ResultEvent, reply: ReplyTarget = {}, headers?: Readonly<Record<string, string>>): Promise<void> {
    const body = Buffer.from(JSON.stringify(event));
    const props = eventProperties(event, reply);
    // the trace context (traceparent), so whoever consumes the event continues the command's trace
    if (headers !== undefined) props.headers = { ...headers };
    if (reply.replyTo) this.replies.send({ replyTo: reply.replyTo, commandId: event.commandId, correlationId: reply.correlationId }, body, props);
    await this.bus.publish(EVENTS_EXCHANGE, eventRoutingKey(this.hostId, outcomeOf(event)), body, props);
  }
}
