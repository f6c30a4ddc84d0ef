import { Duplex } from 'node:stream';
import { connect, type Channel, type ChannelModel, type ConfirmChannel, type Options } from 'amqplib';
import type { TlsFiles } from '../config.js';
import { redactUrl, type Logger } from '../infra/logging.js';
import { asUser, brokerUser } from './broker-user.js';

/**
 * One AMQP connection that comes back by itself.
 *
 * Why our own reconnect loop rather than amqplib 2.x's `recovery` option:
 * - `recovery` reconnects to one URL; CONTRACT.md section 1 wants a list of cluster
 *   nodes tried in turn;
 * - a publisher nack must be answered by a *new connection* (ENVIRONMENT.md: RabbitMQ
 *   3.10 keeps nacking every publish on a channel opened during a quorum leader
 *   election), and `recovery` has no way to drop a connection that is still up;
 * - channels are not recovered by `recovery` either: setup has to rebuild them anyway,
 *   so owning the loop costs ~60 lines and makes every (re)connect explicit: topology,
 *   the confirm channel and the consumer are re-created in one place, in order.
 */

export interface BusErrorCode {
  readonly code: 'BUS_CLOSED' | 'BUS_CONNECT_FAILED';
}

export class BusError extends Error implements BusErrorCode {
  override readonly name = 'BusError';
  constructor(
    readonly code: 'BUS_CLOSED' | 'BUS_CONNECT_FAILED',
    message: string,
  ) {
    super(message);
  }
}

/** One connected period: everything in it dies together when the connection drops. */
export interface BusSession {
  readonly generation: number;
  readonly model: ChannelModel;
  /** Confirm channel shared by every publisher of this session. */
  readonly publisher: ConfirmChannel;
  readonly url: string;
  /**
   * The broker user this session logged in as (from `url`; each URL of the list may name
   * its own), set as user_id on everything the worker publishes; undefined: unknown, unset.
   */
  readonly user: string | undefined;
  /** Every channel of the session, closed one by one on a graceful close. */
  readonly channels: readonly Channel[];
  alive: boolean;
  /** A channel that is closed with the session; its unexpected close ends the session. */
  openChannel(): Promise<Channel>;
  /**
   * A confirm channel for best-effort publishes (the reply_to copy, CONTRACT.md section 3)
   * whose close by the broker does *not* end the session: a copy the broker refuses (403
   * on the default exchange) must not cost the commands in flight their connection. Closed
   * with the session on a graceful close (so its confirms are flushed); reopening it after
   * a broker close is the caller's business.
   */
  openSideChannel(): Promise<ConfirmChannel>;
}

export type SetupHook = (session: BusSession) => Promise<void>;

export interface BusOptions {
  readonly urls: readonly string[];
  readonly tls?: TlsFiles;
  readonly logger: Logger;
  readonly heartbeatSec?: number;
  readonly reconnectInitialMs?: number;
  readonly reconnectMaxMs?: number;
  readonly connectionName?: string;
  /** Called with true on every connect, false on every loss. */
  readonly onConnected?: (connected: boolean) => void;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

export class Bus {
  private session: BusSession | null = null;
  private generation = 0;
  private closed = false;
  private readonly hooks: SetupHook[] = [];
  private waiters: Array<{ resolve: (s: BusSession) => void; reject: (err: Error) => void }> = [];
  /** Set when start() gave up: ready() rejects with it. */
  private fatal: BusError | null = null;
  private everConnected = false;
  private loop: Promise<void> | null = null;
  private urlIndex = 0;
  private wake: (() => void) | null = null;
  private readonly log: Logger;
  private healthy = true;
  private readonly healthListeners = new Set<(healthy: boolean) => void>();
  /** Starts deferred by whenPublishing until a publish is confirmed again. */
  private deferred: Array<{ session: BusSession; start: () => Promise<void> }> = [];

  constructor(private readonly opts: BusOptions) {
    this.log = opts.logger.child({ component: 'bus' });
  }

  /** Runs on every (re)connect, in the order added, after the confirm channel is open. */
  addSetup(hook: SetupHook): void {
    this.hooks.push(hook);
    if (this.session?.alive) void hook(this.session).catch((err: unknown) => this.fail(this.session, err));
  }

  /**
   * False from a publish that was not confirmed (nacked, refused, or lost with its
   * connection) until a publish is confirmed again. Only Bus.publish moves it, and a
   * publish that failed keeps being retried until it is confirmed or the bus closes, so
   * "false" always ends with a confirm or with close().
   */
  get publishHealthy(): boolean {
    return this.healthy;
  }

  /** `listener(healthy)` on every change of publishHealthy; returns the unsubscribe. */
  onPublishHealth(listener: (healthy: boolean) => void): () => void {
    this.healthListeners.add(listener);
    return () => this.healthListeners.delete(listener);
  }

  /**
   * Runs `start` on `session` once publishing is healthy, for a consumer's setup hook:
   * taking commands whose events cannot be confirmed only gets them requeued at the next
   * reconnect, over and over. Healthy now: runs `start` at once and returns its promise
   * (a failure fails the setup, as before). Not healthy: returns at once and runs
   * `start` when a publish is next confirmed (the publishes still being retried, on this
   * session or the next, are what find out), if the session is still alive then (else its
   * successor's setup hooks run again); a failure of `start` then fails the session.
   */
  whenPublishing(session: BusSession, start: () => Promise<void>): Promise<void> {
    if (this.healthy) return start();
    this.log.warn({ generation: session.generation }, 'events are not being confirmed: not consuming until a publish is');
    this.deferred.push({ session, start });
    return Promise.resolve();
  }

  get connected(): boolean {
    return this.session?.alive === true;
  }

  /** Starts the reconnect loop; resolves on the first successful connect. */
  start(): Promise<BusSession> {
    this.loop ??= this.run();
    return this.ready();
  }

  /** The live session, waiting for the next connect when there is none. */
  ready(): Promise<BusSession> {
    if (this.fatal) return Promise.reject(this.fatal);
    if (this.closed) return Promise.reject(new BusError('BUS_CLOSED', 'the bus is closed'));
    if (this.session?.alive) return Promise.resolve(this.session);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }

  /**
   * Publish and wait for the broker's confirm. A nack or a lost channel never retries on
   * the same channel: the connection is dropped and the message republished on the next
   * one. Resolves once confirmed; rejects only when the bus is closed.
   *
   * user_id is set to the session's own user on every attempt (whatever `options` says):
   * a republish may go to another node of the list, logged in as another user.
   */
  async publish(exchange: string, routingKey: string, content: Buffer, options: Options.Publish): Promise<void> {
    for (;;) {
      const session = await this.ready();
      try {
        await new Promise<void>((resolve, reject) => {
          session.publisher.publish(exchange, routingKey, content, asUser(options, session.user), (err: unknown) => (err ? reject(toError(err)) : resolve()));
        });
        this.setHealthy(true);
        return;
      } catch (err) {
        if (this.closed) throw new BusError('BUS_CLOSED', 'the bus closed before the publish was confirmed');
        this.log.warn({ err, exchange, routingKey }, 'publish not confirmed; republishing on a new connection');
        this.setHealthy(false);
        this.fail(session, err);
      }
    }
  }

  private setHealthy(healthy: boolean): void {
    if (healthy === this.healthy) return;
    this.healthy = healthy;
    if (healthy) {
      this.log.info('a publish was confirmed again');
      const deferred = this.deferred;
      this.deferred = [];
      for (const d of deferred) {
        if (d.session.alive && !this.closed) d.start().catch((err: unknown) => this.fail(d.session, err));
      }
    }
    for (const listener of this.healthListeners) listener(healthy);
  }

  /** Drop this session's connection (if still current) and let the loop reconnect. */
  fail(session: BusSession | null, err: unknown): void {
    if (session === null || !session.alive) return;
    session.alive = false;
    if (this.session === session) this.session = null;
    this.deferred = this.deferred.filter((d) => d.session !== session);
    this.opts.onConnected?.(false);
    this.log.warn({ err: toError(err), generation: session.generation }, 'broker connection lost');
    session.model.close().catch(() => undefined);
    this.wake?.();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const s = this.session;
    this.session = null;
    this.wake?.();
    if (s) {
      s.alive = false;
      this.opts.onConnected?.(false);
      // Channels first, each with its round trip: on RabbitMQ 3.10 quorum queues an ack
      // followed at once by connection.close is lost (measured: the message comes back),
      // which would replay every command drained during shutdown.
      // A copy: a side channel leaves the list as it closes.
      for (const ch of [...s.channels]) await ch.close().catch(() => undefined);
      await s.model.close().catch(() => undefined);
    }
    await this.loop?.catch(() => undefined);
  }

  private async run(): Promise<void> {
    let delay = this.opts.reconnectInitialMs ?? 100;
    const maxDelay = this.opts.reconnectMaxMs ?? 5000;
    // Before the first connect: failed attempts in a row, and the first of them that
    // retrying cannot fix (see permanentProblem).
    let failures = 0;
    let permanent: BusError | null = null;
    while (!this.closed) {
      const url = this.opts.urls[this.urlIndex % this.opts.urls.length] ?? '';
      let session: BusSession | null = null;
      try {
        session = await this.connectOnce(url);
        for (const hook of this.hooks) await hook(session);
        if (this.closed) {
          await session.model.close().catch(() => undefined);
          return;
        }
        if (!session.alive) throw new Error('connection lost during setup');
        const connectedAt = Date.now();
        this.session = session;
        this.everConnected = true;
        this.opts.onConnected?.(true);
        this.log.info({ broker: redactUrl(url), generation: session.generation }, 'broker connected');
        const waiters = this.waiters;
        this.waiters = [];
        for (const w of waiters) w.resolve(session);
        await this.untilLost(session);
        // A session that dies young (a nack storm, a node that accepts then drops us)
        // must not turn into a tight reconnect loop: back off as if the connect had failed.
        if (Date.now() - connectedAt < 1000) {
          await this.sleepUnlessClosed(delay);
          delay = Math.min(maxDelay, delay * 2);
        } else {
          delay = this.opts.reconnectInitialMs ?? 100;
        }
      } catch (err) {
        if (session) {
          session.alive = false;
          await session.model.close().catch(() => undefined);
        }
        if (this.closed) return;
        const problem = permanentProblem(err);
        this.log[problem ? 'error' : 'warn']({ err: toError(err), broker: redactUrl(url), retryInMs: delay, ...(problem ? { hint: problem } : {}) }, 'broker connect failed');
        // The next node of the list first: a dead node should not hold us back.
        this.urlIndex++;
        if (!this.everConnected) {
          failures++;
          if (problem) permanent ??= new BusError('BUS_CONNECT_FAILED', `cannot use the broker at ${redactUrl(url)}: ${oneLine(toError(err).message)} (${problem})`);
          // A wrong CA, host name, password or a missing queue is a configuration error:
          // once every node of the list has been tried, stop instead of retrying forever,
          // so `run` fails at start with one line. Nodes that are merely down (refused,
          // timeout) keep being retried, as after the first connect everything is.
          if (permanent && failures >= this.opts.urls.length) {
            this.giveUp(permanent);
            return;
          }
        }
        await this.sleepUnlessClosed(delay);
        delay = Math.min(maxDelay, delay * 2);
      }
    }
  }

  private giveUp(err: BusError): void {
    this.fatal = err;
    this.closed = true;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.reject(err);
  }

  private untilLost(session: BusSession): Promise<void> {
    return new Promise((resolve) => {
      const check = (): void => {
        if (!session.alive || this.closed) resolve();
        else this.wake = check;
      };
      check();
    });
  }

  private sleepUnlessClosed(ms: number): Promise<void> {
    return Promise.race([sleep(ms), new Promise<void>((r) => (this.wake = r))]);
  }

  private async connectOnce(url: string): Promise<BusSession> {
    const tls = this.opts.tls ?? {};
    const model = await connect(withHeartbeat(url, this.opts.heartbeatSec ?? 10), socketOptions(tls, this.opts.connectionName ?? 'cdrom-worker'));
    coalesceWrites(model);
    const generation = ++this.generation;
    const channels: Channel[] = [];
    // eslint-disable-next-line prefer-const -- assigned after the object that the closures capture
    let session: BusSession;
    const onLost = (err: unknown): void => this.fail(session, err ?? new Error('connection closed'));
    model.on('error', (err: Error) => this.log.debug({ err }, 'connection error'));
    model.on('close', onLost);
    model.on('blocked', (reason: string) => this.log.warn({ reason }, 'broker blocked the connection'));
    const track = <C extends Channel>(ch: C): C => {
      channels.push(ch);
      ch.on('error', (err: Error) => this.log.warn({ err }, 'channel error'));
      // A channel closed by the broker (404, 406, precondition) leaves the session in an
      // unknown state; a fresh connection re-runs every setup and is simpler to reason about.
      ch.on('close', () => {
        if (session.alive) onLost(new Error('channel closed by the broker'));
      });
      return ch;
    };
    const publisher = track(await model.createConfirmChannel());
    session = {
      generation,
      model,
      publisher,
      url,
      user: brokerUser(url),
      channels,
      alive: true,
      openChannel: async () => track(await model.createChannel()),
      openSideChannel: async () => {
        const ch = await model.createConfirmChannel();
        channels.push(ch);
        // The owner logs what went wrong with its publishes; without a listener an
        // 'error' event would be thrown.
        ch.on('error', (err: Error) => this.log.debug({ err }, 'side channel closed by the broker'));
        ch.on('close', () => {
          const i = channels.indexOf(ch);
          if (i >= 0) channels.splice(i, 1);
        });
        return ch;
      },
    };
    return session;
  }
}

/**
 * amqplib hands the socket every frame as its own write (its channel buffers are in object
 * mode), so a burst of events and acks cost one write syscall each. The socket is corked
 * at the first write of a tick and uncorked at its end: the burst leaves as one writev,
 * in the same order, no later than before.
 */
function coalesceWrites(model: ChannelModel): void {
  const stream: unknown = (model as unknown as { connection?: { stream?: unknown } }).connection?.stream;
  if (!(stream instanceof Duplex)) return;
  const socket = stream;
  const write = socket.write.bind(socket);
  let corked = false;
  const uncork = (): void => {
    corked = false;
    socket.uncork();
  };
  socket.write = function (...args: Parameters<Duplex['write']>): boolean {
    if (!corked) {
      corked = true;
      socket.cork();
      process.nextTick(uncork);
    }
    return write(...args);
  } as Duplex['write'];
}

/** The socket options of every connection: the worker's, the client's and the CLI's. */
function socketOptions(tls: TlsFiles, connectionName: string) {
  return {
    // Without it every request/response round trip costs ~44 ms (Nagle + delayed ack).
    noDelay: true,
    timeout: 5000,
    ...(tls.ca ? { ca: [tls.ca] } : {}),
    ...(tls.cert ? { cert: tls.cert } : {}),
    ...(tls.key ? { key: tls.key } : {}),
    clientProperties: { connection_name: connectionName },
  };
}

function withHeartbeat(url: string, seconds: number): string {
  const u = new URL(url);
  if (!u.searchParams.has('heartbeat')) u.searchParams.set('heartbeat', String(seconds));
  return u.toString();
}

/** Node's codes for a server certificate that does not verify. */
const TLS_VERIFY_CODES = new Set([
  'UNABLE_TO_VERIFY_LEAF_SIGNATURE',
  'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY',
  'SELF_SIGNED_CERT_IN_CHAIN',
  'DEPTH_ZERO_SELF_SIGNED_CERT',
  'CERT_SIGNATURE_FAILURE',
  'CERT_HAS_EXPIRED',
  'CERT_NOT_YET_VALID',
  'CERT_UNTRUSTED',
  'CERT_REJECTED',
]);

/**
 * What to fix when `err` is one that retrying the same settings cannot cure (TLS
 * verification, credentials, vhost access, a missing or unusable broker object); null
 * for everything else (refused, timeout, reset, a node that is starting or electing).
 */
export function permanentProblem(err: unknown): string | null {
  if (!(err instanceof Error)) return null;
  const code = (err as { code?: unknown }).code;
  if (code === 'ERR_TLS_CERT_ALTNAME_INVALID') return "the URL's host name is not in the server certificate";
  if (typeof code === 'string' && TLS_VERIFY_CODES.has(code)) return 'the server certificate does not verify against CDROM_AMQP_CA';
  if (typeof code === 'string' && code.startsWith('ERR_SSL_')) return 'TLS handshake failed: check amqps:// vs amqp://, the port and the client certificate';
  const m = err.message;
  if (/ACCESS[-_]REFUSED - Login was refused/.test(m) || /\b403\b.*Login/.test(m)) return 'the broker refused the user name or password in CDROM_AMQP_URL';
  // amqplib reports a refused vhost only as an unexpected close in reply to connection.open.
  if (/NOT[-_]ALLOWED/.test(m) || /Expected ConnectionOpenOk; got <ConnectionClose/.test(m)) return "the user has no access to the URL's vhost, or it does not exist";
  if (code === 403 || /ACCESS[-_]REFUSED/.test(m)) return 'the broker user lacks a permission; a least-privilege user needs CDROM_DECLARE_TOPOLOGY=0';
  if (code === 404 || /NOT[-_]FOUND/.test(m)) return 'a broker object is missing; an administrator declares them with `cdrom-worker topology declare`';
  if (code === 406 || /PRECONDITION[-_]FAILED/.test(m)) return 'a broker object exists with other settings than section 2 of the contract';
  return null;
}

function oneLine(s: string): string {
  return s.replace(/\s+/g, ' ').trim();
}

function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}

/**
 * A plain, short-lived connection for the CLI tools (send, events, dlq): tries each URL
 * once, in turn, and fails if none answers.
 */
export async function connectOnce(urls: readonly string[], tls: TlsFiles = {}): Promise<ChannelModel> {
  return (await connectFirst(urls, tls)).model;
}

/**
 * connectOnce, also saying which URL answered and so which broker user the tool is
 * (`brokerUser(url)`): `send` and `dlq replay` publish as that user (user_id).
 * `connectionName` is what the broker lists (rabbitmqctl list_connections).
 */
export async function connectFirst(urls: readonly string[], tls: TlsFiles = {}, connectionName = 'cdrom-worker-cli'): Promise<{ model: ChannelModel; url: string }> {
  let last: unknown = null;
  for (const url of urls) {
    try {
      const model = await connect(withHeartbeat(url, 10), socketOptions(tls, connectionName));
      return { model, url };
    } catch (err) {
      last = err;
    }
  }
  throw new BusError('BUS_CONNECT_FAILED', `no broker answered (${urls.map(redactUrl).join(', ')}): ${toError(last).message}`);
}
