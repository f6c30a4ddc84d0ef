import { randomUUID } from 'node:crypto';
import type { ConsumeMessage } from 'amqplib';
import { context, propagation } from '@opentelemetry/api';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import type { TlsFiles } from '../config.js';
import { ResultEventSchema, type ChangeCdCommand, type ResultEvent } from '../contracts/schemas.js';
import { asUser } from '../consumers/broker-user.js';
import { COMMANDS_EXCHANGE } from '../consumers/topology.js';
import { CdromClientError } from './errors.js';
import { EventStream, type EventFilter, type EventSubscription } from './events.stream.js';
import { DIRECT_REPLY_TO, openSession, type ClientSession } from './session.js';

/**
 * The engine's side of the contract (CONTRACT.md sections 3 and 4), importable as
 * `cdrom-worker/client`: send a changeCD and await its result event, or follow
 * cdrom.events.
 *
 * A failed or rejected command resolves: its event is the answer (`event.type`, `error`
 * say what happened), exactly as a completed one. Only the client's own trouble rejects
 * (CdromClientError: TIMEOUT, NO_ROUTE, CONNECT_FAILED, CLOSED).
 */

export type { ChangeCdCommand, ResultEvent } from '../contracts/schemas.js';
export type { TlsFiles } from '../config.js';
export { CdromClientError, isCdromClientError, type CdromClientErrorCode } from './errors.js';
export type { EventFilter, EventSubscription, Outcome } from './events.stream.js';

export type ChangeRequest = Pick<ChangeCdCommand, 'vmId' | 'drive' | 'media'>;

export interface ChangeOptions {
  /** The idempotency key; default a new UUID. Re-using one gets the first answer again. */
  readonly commandId?: string;
  /** Overall wait for the event, re-sends included; default 60 000. */
  readonly timeoutMs?: number;
  /** Gives up waiting (CLOSED); the command, once published, still runs. */
  readonly signal?: AbortSignal;
}

export interface ClientOptions {
  /** What the broker lists the connection as; default `cdrom-client`. */
  readonly connectionName?: string;
}

const DEFAULT_TIMEOUT_MS = 60_000;
const checkEvent = TypeCompiler.Compile(ResultEventSchema);

/** A result event from its JSON, or null when it is not one (the contract's schema). */
function parseEvent(content: Buffer): ResultEvent | null {
  try {
    const value: unknown = JSON.parse(content.toString('utf8'));
    return checkEvent.Check(value) ? value : null;
  } catch {
    return null;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class CdromClient {
  private current: ClientSession | null = null;
  private connecting: Promise<ClientSession> | null = null;
  private closed = false;
  /** Waiters for a command's event, by commandId (= the correlation_id we send). */
  private readonly pending = new Map<string, Set<(event: ResultEvent) => void>>();
  private readonly streams = new Set<EventStream>();

  /** Use connect(). */
  constructor(
    private readonly urls: readonly string[],
    private readonly tls: TlsFiles,
    private readonly options: ClientOptions,
  ) {}

  /** The live session, opening one (URLs in turn) when there is none. */
  session(): Promise<ClientSession> {
    if (this.closed) return Promise.reject(new CdromClientError('CLOSED', 'the client is closed'));
    if (this.current?.alive()) return Promise.resolve(this.current);
    this.connecting ??= openSession(this.urls, this.tls, this.options.connectionName ?? 'cdrom-client', (msg) => this.onReply(msg))
      .then(async (s) => {
        if (this.closed) {
          await s.close();
          throw new CdromClientError('CLOSED', 'the client is closed');
        }
        this.current = s;
        return s;
      })
      .finally(() => (this.connecting = null));
    return this.connecting;
  }

  /**
   * Publishes a changeCD to `hostId` and resolves with its result event, whatever the
   * outcome. On a lost connection it re-publishes with the same commandId on a new one
   * (its direct reply-to address died with the old channel); the worker answers a
   * repeat from its journal with an identical event and never changes the drive twice
   * (CONTRACT §4), so re-sending is safe. Rejects with TIMEOUT after timeoutMs.
   */
  async changeCD(hostId: string, request: ChangeRequest, options: ChangeOptions = {}): Promise<ResultEvent> {
    const command: ChangeCdCommand = { type: 'changeCD', version: 1, commandId: options.commandId ?? randomUUID(), vmId: request.vmId, drive: request.drive, media: request.media };
    const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    let settle: (event: ResultEvent) => void = () => undefined;
    const answer = new Promise<ResultEvent>((resolve) => (settle = resolve));
    // Registered before the first publish: the reply may beat the confirm.
    const waiters = this.pending.get(command.commandId) ?? new Set();
    waiters.add(settle);
    this.pending.set(command.commandId, waiters);
    let timer: NodeJS.Timeout | undefined;
    let onAbort: () => void = () => undefined;
    const giveUp = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new CdromClientError('TIMEOUT', `no result event for ${command.commandId} from ${hostId} within ${timeoutMs} ms`)), timeoutMs);
      onAbort = () => reject(new CdromClientError('CLOSED', 'aborted'));
      if (options.signal?.aborted) onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
    });
    giveUp.catch(() => undefined);
    try {
      let backoff = 100;
      for (;;) {
        let session: ClientSession;
        try {
          session = await Promise.race([this.session(), giveUp]);
        } catch (err) {
          // A broker that is away may come back before the deadline (a node restart);
          // TIMEOUT and CLOSED end the wait.
          if (!(err instanceof CdromClientError) || err.code !== 'CONNECT_FAILED') throw err;
          await Promise.race([sleep(backoff), giveUp]);
          backoff = Math.min(backoff * 2, 2000);
          continue;
        }
        const { lost, dispose } = session.whenLost();
        try {
          const sent = await Promise.race([this.publish(session, hostId, command, DIRECT_REPLY_TO), lost.then(() => false), giveUp]);
          if (sent) {
            const got = await Promise.race([answer, lost.then(() => null), giveUp]);
            if (got !== null) return got;
          }
        } finally {
          dispose();
        }
        // Lost before the event came back: it may have gone to the old, dead address.
      }
    } finally {
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      waiters.delete(settle);
      if (waiters.size === 0 && this.pending.get(command.commandId) === waiters) this.pending.delete(command.commandId);
    }
  }

  /**
   * Publishes a changeCD without waiting for its event (follow it with events(), or
   * not at all); resolves with its commandId once the broker has confirmed it. A nack is
   * re-sent on a new connection, as changeCD does.
   */
  async send(hostId: string, request: ChangeRequest, options: Pick<ChangeOptions, 'commandId'> = {}): Promise<string> {
    const command: ChangeCdCommand = { type: 'changeCD', version: 1, commandId: options.commandId ?? randomUUID(), vmId: request.vmId, drive: request.drive, media: request.media };
    for (;;) {
      const session = await this.session();
      const { lost, dispose } = session.whenLost();
      try {
        if (await Promise.race([this.publish(session, hostId, command), lost.then(() => false)])) return command.commandId;
      } finally {
        dispose();
      }
    }
  }

  /**
   * true once the broker confirmed the command; false when it nacked it (the caller
   * re-sends on a fresh connection, as the worker's bus does). NO_ROUTE: nothing is bound
   * for `hostId`, which no re-send cures.
   */
  private publish(session: ClientSession, hostId: string, command: ChangeCdCommand, replyTo?: string): Promise<boolean> {
    // The caller's trace goes with the command (W3C traceparent/tracestate headers), so the
    // worker's span continues it. Without an OpenTelemetry SDK in the engine's process the
    // API's propagator is a no-op and no header is added.
    const headers: Record<string, string> = {};
    propagation.inject(context.active(), headers);
    return new Promise<boolean>((resolve, reject) => {
      session.commands.publish(
        COMMANDS_EXCHANGE,
        hostId,
        Buffer.from(JSON.stringify(command)),
        // user_id: the login of the URL that answered, which RabbitMQ checks and a worker
        // with CDROM_TRUSTED_SENDERS trusts (CONTRACT §3 v1.1).
        asUser(
          {
            persistent: true,
            contentType: 'application/json',
            messageId: command.commandId,
            correlationId: command.commandId,
            ...(replyTo === undefined ? {} : { replyTo }),
            mandatory: true,
            timestamp: Math.floor(Date.now() / 1000),
            ...(Object.keys(headers).length > 0 ? { headers } : {}),
          },
          session.user,
        ),
        (err: unknown) => {
          if (err) {
            // A nack: drop this connection (RabbitMQ may keep nacking a channel opened
            // during a quorum leader election) and let the loop re-send on a new one.
            void session.close();
            return resolve(false);
          }
          // basic.return arrives before the confirm of the same message.
          if (session.returned.delete(command.commandId)) return reject(new CdromClientError('NO_ROUTE', `no queue is bound for host ${hostId}: is its worker set up?`));
          resolve(true);
        },
      );
    });
  }

  /** Direct replies, matched by correlation_id; the worker may send a repeat: first one wins. */
  private onReply(msg: ConsumeMessage): void {
    const event = parseEvent(msg.content);
    if (event === null) return;
    const correlationId: unknown = msg.properties.correlationId;
    const id = typeof correlationId === 'string' ? correlationId : event.commandId;
    // An event about another command (a stale correlation) is not this command's answer.
    if (id === null || event.commandId !== id) return;
    const waiters = this.pending.get(id);
    if (!waiters) return;
    this.pending.delete(id);
    for (const w of waiters) w(event);
  }

  /**
   * Result events from cdrom.events, as they are published, filtered by routing key
   * (`hostId`, `outcome`) and by `vmId`. `await sub.bound` before sending what it should
   * see; end it with `return()` (a `for await` … `break` does), or the filter's signal.
   */
  events(filter: EventFilter = {}): EventSubscription {
    const stream: EventStream = new EventStream(this.session(), filter, parseEvent, () => this.streams.delete(stream));
    this.streams.add(stream);
    return stream;
  }

  /** Ends every subscription and the connection; pending changeCD calls reject CLOSED. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.streams]) s.end();
    await this.connecting?.catch(() => undefined);
    await this.current?.close();
    this.current = null;
  }
}

/**
 * Connects to the broker (a list of cluster nodes is tried in turn; `amqps://` with
 * `tls` files) and returns the client. Fails with CONNECT_FAILED when no node answers.
 */
export async function connect(url: string | readonly string[], tls: TlsFiles = {}, options: ClientOptions = {}): Promise<CdromClient> {
  const urls = typeof url === 'string' ? url.split(',').map((u) => u.trim()).filter(Boolean) : url;
  if (urls.length === 0) throw new CdromClientError('CONNECT_FAILED', 'no broker URL given');
  const client = new CdromClient(urls, tls, options);
  await client.session();
  return client;
}
