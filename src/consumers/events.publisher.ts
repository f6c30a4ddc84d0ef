import { randomUUID } from 'node:crypto';
import type { Options } from 'amqplib';
import type { ChangeCdCommand, ResultEvent } from '../contracts/schemas.js';
import type { Rejection } from '../contracts/command.decode.js';
import type { ErrorInfo } from '../domain/errors.js';
import type { Attempt, ChangeResult, ResultOutcome } from '../domain/outcome.js';
import type { Bus } from './connection.js';
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

/** Publishes result events (persistent JSON) with confirms, plus the reply_to copy. */
export class EventPublisher {
  constructor(
    private readonly bus: Bus,
    private readonly hostId: string,
  ) {}

  /** Resolves once every copy is confirmed by the broker. */
  async publish(event: ResultEvent, reply: ReplyTarget = {}): Promise<void> {
    const body = Buffer.from(JSON.stringify(event));
    const props: Options.Publish = {
      persistent: true,
      contentType: 'application/json',
      messageId: randomUUID(),
      timestamp: Math.floor(Date.now() / 1000),
      type: event.type,
      appId: 'cdrom-worker',
      ...(reply.correlationId ? { correlationId: reply.correlationId } : {}),
    };
    const copies = [this.bus.publish(EVENTS_EXCHANGE, eventRoutingKey(this.hostId, outcomeOf(event)), body, props)];
    if (reply.replyTo) copies.push(this.bus.publish('', reply.replyTo, body, props));
    await Promise.all(copies);
  }
}
