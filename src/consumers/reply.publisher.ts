import type { ConfirmChannel, Message, Options } from 'amqplib';
import type { Logger } from '../infra/logging.js';
import type { Metrics } from '../infra/metrics.js';
import { asUser } from './broker-user.js';
import type { Bus, BusSession } from './connection.js';

/**
 * The reply_to copy of a result event (CONTRACT.md section 3): best effort. A reply_to
 * that is refused, unroutable or gone never delays, fails or repeats the command; only
 * the `cdrom.events` copy gates the ack.
 *
 * So the copy goes out on a channel of its own, fire and forget:
 * - its own channel, because RabbitMQ answers a publish the user may not make (a host
 *   user without write on `amq.default`) by closing the channel (measured on 3.10: 403
 *   ACCESS_REFUSED, ~7 ms after the publish). On the shared confirm channel that close
 *   ended the session: the event was republished on a new connection, refused again,
 *   forever, and every command in flight was requeued at each turn. A broker close of
 *   this channel ends nothing; the next copy opens a new one.
 * - not awaited: the caller's ack waits for nothing here. A bounded wait would still add
 *   a round trip to every command with a reply_to, and more when the channel has to be
 *   (re)opened; what the confirm tells us is only needed for the log and the counter.
 * - with confirms and `mandatory`: a nack, a refusal, a return (no queue of that name:
 *   the sender's reply queue is gone) and a lost connection are each logged (warn, with
 *   replyTo and commandId) and counted in `cdrom_reply_copies_failed_total{reason}`.
 *   Never retried: the copy is sent once per event published (a redelivered command is
 *   answered, and copied, again, as before).
 */

export type ReplyFailure = 'refused' | 'unroutable' | 'nacked' | 'lost';

/** One side channel of one session, and how it ended. */
interface Side {
  readonly session: BusSession;
  readonly channel: Promise<ConfirmChannel>;
  closed: boolean;
  /** The broker's reason for closing it (403 for a refused publish), null if not by the broker. */
  closedBy: (Error & { code?: unknown }) | null;
}

export interface ReplyCopy {
  readonly replyTo: string;
  readonly commandId: string | null;
  readonly correlationId?: string | undefined;
}

export class ReplyPublisher {
  private side: Side | null = null;
  private readonly log: Logger;

  constructor(
    private readonly bus: Pick<Bus, 'ready'>,
    logger: Logger,
    private readonly metrics?: Pick<Metrics, 'replyCopiesFailed'>,
  ) {
    this.log = logger.child({ component: 'reply-copies' });
  }

  /** Sends one copy; returns at once. The outcome is only logged and counted. */
  send(copy: ReplyCopy, content: Buffer, options: Options.Publish): void {
    void this.publish(copy, content, options).then(
      (failure) => {
        if (failure !== null) this.failed(failure.reason, copy, failure.err);
      },
      (err: unknown) => this.failed('lost', copy, err),
    );
  }

  private async publish(copy: ReplyCopy, content: Buffer, options: Options.Publish): Promise<{ reason: ReplyFailure; err?: unknown } | null> {
    // Waits for a session like the events copy does, so a copy made while the broker is
    // away goes out once it is back; rejects only when the bus is closed.
    const session = await this.bus.ready();
    const side = this.sideOf(session);
    let ch: ConfirmChannel;
    try {
      ch = await side.channel;
    } catch (err) {
      side.closed = true;
      return { reason: 'lost', err };
    }
    return new Promise((resolve) => {
      try {
        ch.publish('', copy.replyTo, content, { ...asUser(options, session.user), mandatory: true }, (err: unknown) => {
          if (!err) resolve(null);
          // A nack is reported as such; a callback failed because the channel closed is a
          // refusal when the broker closed it with a reason (it refused this copy or one
          // before it on the same channel), else the connection went away.
          else if (err instanceof Error && err.message === 'message nacked') resolve({ reason: 'nacked', err });
          else if (side.closedBy !== null) resolve({ reason: 'refused', err: side.closedBy });
          else resolve({ reason: 'lost', err });
        });
      } catch (err) {
        // The channel closed between the check and the publish: nothing was sent.
        side.closed = true;
        resolve({ reason: side.closedBy !== null ? 'refused' : 'lost', err: side.closedBy ?? err });
      }
    });
  }

  /** The session's side channel, opened now if there is none or the last one closed. */
  private sideOf(session: BusSession): Side {
    const current = this.side;
    if (current !== null && current.session === session && !current.closed) return current;
    const side: Side = {
      session,
      closed: false,
      closedBy: null,
      channel: session.openSideChannel().then((ch) => {
        ch.on('error', (err: Error) => (side.closedBy = err));
        ch.on('close', () => (side.closed = true));
        // basic.return comes before the confirm of the same message, which then succeeds:
        // the return alone says the copy reached no queue. The returned message itself
        // names the reply queue and the event, so nothing needs correlating.
        ch.on('return', (msg: Message) => this.returned(msg));
        return ch;
      }),
    };
    // Failure to open is reported by the copy that needed it.
    side.channel.catch(() => undefined);
    this.side = side;
    return side;
  }

  private returned(msg: Message): void {
    const correlationId: unknown = msg.properties.correlationId;
    // amqplib's types leave out basic.return's reply code and text.
    const { replyCode, replyText } = msg.fields as { replyCode?: unknown; replyText?: unknown };
    this.failed(
      'unroutable',
      { replyTo: msg.fields.routingKey, commandId: commandIdOf(msg.content), correlationId: typeof correlationId === 'string' ? correlationId : undefined },
      new Error(`${String(replyCode)} ${String(replyText)}: no queue named by reply_to`),
    );
  }

  private failed(reason: ReplyFailure, copy: ReplyCopy, err: unknown): void {
    this.metrics?.replyCopiesFailed.inc({ reason });
    this.log.warn({ reason, replyTo: copy.replyTo, commandId: copy.commandId, correlationId: copy.correlationId, err }, 'reply_to copy not delivered (best effort, not retried)');
  }
}

/** The event's commandId, read back from a returned copy (it is our own JSON). */
function commandIdOf(content: Buffer): string | null {
  try {
    const v: unknown = JSON.parse(content.toString('utf8'));
    const id = typeof v === 'object' && v !== null ? (v as Record<string, unknown>)['commandId'] : null;
    return typeof id === 'string' ? id : null;
  } catch {
    return null;
  }
}
