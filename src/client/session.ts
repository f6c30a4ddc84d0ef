import type { ChannelModel, ConfirmChannel, ConsumeMessage, Message } from 'amqplib';
import type { TlsFiles } from '../config.js';
import { brokerUser } from '../consumers/broker-user.js';
import { connectFirst } from '../consumers/connection.js';
import { CdromClientError } from './errors.js';

/** RabbitMQ's direct reply-to pseudo-queue: replies come straight to the consuming channel. */
export const DIRECT_REPLY_TO = 'amq.rabbitmq.reply-to';

/**
 * One connection of the client and its command channel. Everything in it dies together:
 * a direct reply-to address is only valid for the channel that consumed it, so a new
 * connection means a new address, and callers re-send with the same commandId.
 */
export interface ClientSession {
  readonly model: ChannelModel;
  /** Confirm channel that publishes commands and consumes their direct replies. */
  readonly commands: ConfirmChannel;
  /** The broker user of the URL that answered: the commands' user_id (CONTRACT §3). */
  readonly user: string | undefined;
  /**
   * A promise that resolves when the connection or the command channel is gone, and its
   * disposal. Per call, not one shared promise: a reaction on a shared promise lives as
   * long as the connection, and an engine's long-lived client makes millions of calls.
   */
  whenLost(): { readonly lost: Promise<void>; readonly dispose: () => void };
  readonly alive: () => boolean;
  /** message_ids returned unroutable (mandatory); basic.return precedes the confirm. */
  readonly returned: Set<string>;
  close(): Promise<void>;
}

export async function openSession(
  urls: readonly string[],
  tls: TlsFiles,
  connectionName: string,
  onReply: (msg: ConsumeMessage) => void,
): Promise<ClientSession> {
  let model: ChannelModel;
  let url: string;
  try {
    ({ model, url } = await connectFirst(urls, tls, connectionName));
  } catch (err) {
    throw new CdromClientError('CONNECT_FAILED', err instanceof Error ? err.message : String(err), { cause: err });
  }
  let alive = true;
  const listeners = new Set<() => void>();
  const markLost = (): void => {
    for (const l of listeners) l();
    listeners.clear();
  };
  const whenLost = (): { lost: Promise<void>; dispose(): void } => {
    let listener: () => void = () => undefined;
    const lost = new Promise<void>((resolve) => (listener = resolve));
    if (alive) listeners.add(listener);
    else listener();
    return { lost, dispose: () => listeners.delete(listener) };
  };
  const end = (): void => {
    if (!alive) return;
    alive = false;
    markLost();
    // A channel closed by the broker (a refused user_id, say) leaves the connection up:
    // drop it too, so the next call starts from a fresh session.
    model.close().catch(() => undefined);
  };
  // Without listeners an 'error' event would be thrown; 'close' follows and says enough.
  model.on('error', () => undefined);
  model.on('close', end);
  try {
    const commands = await model.createConfirmChannel();
    commands.on('error', () => undefined);
    commands.on('close', end);
    const returned = new Set<string>();
    commands.on('return', (msg: Message) => {
      const id: unknown = msg.properties.messageId;
      if (typeof id === 'string') returned.add(id);
    });
    // Consumed before anything is published with reply_to: RabbitMQ refuses a publish
    // naming amq.rabbitmq.reply-to on a channel that does not consume it.
    await commands.consume(DIRECT_REPLY_TO, (msg) => msg && onReply(msg), { noAck: true });
    return {
      model,
      commands,
      user: brokerUser(url),
      whenLost,
      alive: () => alive,
      returned,
      close: async () => {
        alive = false;
        markLost();
        await model.close().catch(() => undefined);
      },
    };
  } catch (err) {
    end();
    throw new CdromClientError('CONNECT_FAILED', `connected, but could not set up the reply channel: ${err instanceof Error ? err.message : String(err)}`, { cause: err });
  }
}
