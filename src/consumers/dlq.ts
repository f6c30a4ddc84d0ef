import type { ChannelModel, ConfirmChannel, GetMessage } from 'amqplib';
import { asUser } from './broker-user.js';
import { ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER, REPLAYED_HEADER, SENDER_HEADER, headersOf, optString, replayOptions } from './message-props.js';
import { COMMANDS_EXCHANGE, deadQueue } from './topology.js';

/**
 * CONTRACT.md section 6: inspect and replay `cdrom.dead.<hostId>`.
 *
 * Every operation takes the messages present when it starts (bounded by the queue's
 * message count then), holds them unacked while it works, and returns what it did not
 * consume with a requeue, so nothing is lost if the tool dies half way (the broker
 * requeues unacked messages when the connection drops).
 */

export interface DeadLetter {
  /** The AMQP message_id if set, else the 1-based position in the queue. */
  readonly id: string;
  readonly position: number;
  readonly commandId: string | null;
  readonly errorCode: string | null;
  readonly errorMessage: string | null;
  /**
   * Who published the original (its broker-validated user_id, kept by the worker in
   * `x-cdrom-sender`); null when it set none, or when the message did not come from the
   * worker (anyone with write on cdrom.dead can put one there: docs/security.md).
   */
  readonly sender: string | null;
  /**
   * Who published the dead letter itself (its user_id): the host's worker user for the
   * dead letters the worker made; the original sender's for a command the broker
   * dead-lettered (backstop policy, x-death headers: it keeps every property). Anything
   * else was put there by hand, or by another host through the direct exchange
   * cdrom.dead, and its x-cdrom-sender means nothing.
   */
  readonly deadLetteredBy: string | null;
  readonly replayed: number;
  readonly message: GetMessage;
}

export class DlqError extends Error {
  override readonly name = 'DlqError';
  constructor(
    readonly code: 'DLQ_NOT_FOUND' | 'DLQ_NO_SELECTION',
    message: string,
  ) {
    super(message);
  }
}

function commandIdOf(content: Buffer): string | null {
  try {
    const v: unknown = JSON.parse(content.toString('utf8'));
    if (typeof v === 'object' && v !== null && typeof (v as Record<string, unknown>)['commandId'] === 'string') {
      return (v as Record<string, string>)['commandId'] ?? null;
    }
  } catch {
    // not JSON: no commandId to show
  }
  return null;
}

function describe(msg: GetMessage, position: number): DeadLetter {
  const h = headersOf(msg.properties);
  const replayed = Number(h[REPLAYED_HEADER] ?? 0);
  const text = (v: unknown): string | null => (typeof v === 'string' ? v : Buffer.isBuffer(v) ? v.toString('utf8') : null);
  return {
    id: optString(msg.properties.messageId) ?? String(position),
    position,
    commandId: commandIdOf(msg.content),
    errorCode: text(h[ERROR_CODE_HEADER]),
    errorMessage: text(h[ERROR_MESSAGE_HEADER]),
    sender: text(h[SENDER_HEADER]),
    deadLetteredBy: optString(msg.properties.userId) ?? null,
    replayed: Number.isFinite(replayed) ? replayed : 0,
    message: msg,
  };
}

export class DeadLetterQueue {
  private constructor(
    private readonly model: ChannelModel,
    private readonly hostId: string,
    private readonly user: string | undefined,
  ) {}

  /**
   * `user`: the broker user `model` logged in as (`brokerUser(url)`). A replay is sent as
   * that user (user_id), so with CDROM_TRUSTED_SENDERS the worker runs it only when the
   * operator replaying it is trusted, whoever sent the original.
   */
  static open(model: ChannelModel, hostId: string, user: string | undefined): DeadLetterQueue {
    return new DeadLetterQueue(model, hostId, user);
  }

  /** Fetch every message present now, run `work` on them, then requeue what is left. */
  private async withAll<T>(work: (ch: ConfirmChannel, all: DeadLetter[]) => T | Promise<T>): Promise<T> {
    const ch = await this.model.createConfirmChannel();
    ch.on('error', () => undefined);
    try {
      let count: number;
      try {
        count = (await ch.checkQueue(deadQueue(this.hostId))).messageCount;
      } catch {
        throw new DlqError('DLQ_NOT_FOUND', `queue ${deadQueue(this.hostId)} does not exist`);
      }
      const all: DeadLetter[] = [];
      for (let i = 0; i < count; i++) {
        const m = await ch.get(deadQueue(this.hostId), { noAck: false });
        if (m === false) break;
        all.push(describe(m, i + 1));
      }
      const result = await work(ch, all);
      // Whatever work did not ack goes back, in order.
      ch.nackAll(true);
      return result;
    } finally {
      await ch.close().catch(() => undefined);
    }
  }

  list(): Promise<DeadLetter[]> {
    return this.withAll((_ch, all) => all);
  }

  /** One message by ID (message_id or position). */
  async show(id: string): Promise<DeadLetter> {
    const found = await this.withAll((_ch, all) => all.find((d) => d.id === id) ?? all.find((d) => String(d.position) === id));
    if (!found) throw new DlqError('DLQ_NOT_FOUND', `no dead letter with ID ${id}`);
    return found;
  }

  /** Republish the chosen originals to cdrom.commands; returns those replayed. */
  async replay(ids: readonly string[] | 'all'): Promise<DeadLetter[]> {
    return this.withAll(async (ch, all) => {
      const chosen = ids === 'all' ? all : all.filter((d) => ids.includes(d.id) || ids.includes(String(d.position)));
      if (ids !== 'all') {
        const missing = ids.filter((id) => !all.some((d) => d.id === id || String(d.position) === id));
        if (missing.length > 0) throw new DlqError('DLQ_NOT_FOUND', `no dead letter with ID ${missing.join(', ')}`);
      }
      for (const d of chosen) {
        ch.publish(COMMANDS_EXCHANGE, this.hostId, d.message.content, asUser(replayOptions(d.message.properties, d.replayed + 1), this.user));
      }
      // A nack rejects this promise and nothing is acked: the originals stay dead-lettered.
      await ch.waitForConfirms();
      for (const d of chosen) ch.ack(d.message);
      return chosen;
    });
  }

  /** Drop every message present now; returns how many. */
  async purge(): Promise<number> {
    return this.withAll((ch, all) => {
      for (const d of all) ch.ack(d.message);
      return all.length;
    });
  }
}
