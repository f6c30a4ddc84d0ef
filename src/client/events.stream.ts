import type { Channel, ConsumeMessage } from 'amqplib';
import type { ResultEvent } from '../contracts/schemas.js';
import { EVENTS_EXCHANGE, eventRoutingKey } from '../consumers/topology.js';
import { CdromClientError } from './errors.js';
import type { ClientSession } from './session.js';

export type Outcome = 'completed' | 'failed' | 'rejected';

export interface EventFilter {
  /** Only this host's events (routing key); default every host. */
  readonly hostId?: string;
  /** Only this outcome (routing key); default every outcome. */
  readonly outcome?: Outcome;
  /** Only this VM (checked on the body, case-insensitively: no routing key carries it). */
  readonly vmId?: string;
  /** Ends the iteration, as return() does. */
  readonly signal?: AbortSignal;
}

/** An events() subscription: iterate it; return() (or `break`, or the signal) ends it. */
export interface EventSubscription extends AsyncIterableIterator<ResultEvent> {
  /** Resolves once the queue is bound: events published after that are seen. */
  readonly bound: Promise<void>;
  /** `host.changeCD.outcome` pattern the queue is bound with. */
  readonly bindingKey: string;
}

/**
 * How many events the broker hands over before the iterator has taken them: acks are
 * sent as the iterator yields, so a slow loop body holds the rest in the broker's queue
 * instead of growing this process's memory.
 */
const PREFETCH = 64;

type Check = (event: ResultEvent) => boolean;

/**
 * An exclusive, auto-delete, server-named queue bound to cdrom.events: nothing to clean
 * up, it goes with its consumer (return) or with the connection (crash).
 *
 * A lost connection ends the iteration with CONNECTION_LOST rather than silently
 * re-binding: events published in between would be missed, and a tail that may have
 * gaps has to say so. The caller opens a new subscription (client.events again).
 */
export class EventStream implements EventSubscription {
  readonly bound: Promise<void>;
  readonly bindingKey: string;
  private readonly buffer: Array<{ event: ResultEvent; msg: ConsumeMessage }> = [];
  private waiter: (() => void) | null = null;
  private channel: Channel | null = null;
  private ended = false;
  private failure: CdromClientError | null = null;
  private detach: () => void = () => undefined;

  constructor(
    session: Promise<ClientSession>,
    filter: EventFilter,
    parse: (content: Buffer) => ResultEvent | null,
    /** Called once when the subscription ends, however it ends. */
    private readonly onEnd: () => void = () => undefined,
  ) {
    this.bindingKey = eventRoutingKey(filter.hostId ?? '*', filter.outcome ?? '*');
    const vm = filter.vmId?.toLowerCase();
    const wanted: Check = vm === undefined ? () => true : (e) => e.vmId?.toLowerCase() === vm;
    this.bound = this.bind(session, parse, wanted);
    // A failed bind is reported by next(); this keeps it from being "unhandled" meanwhile.
    this.bound.catch(() => undefined);
    const signal = filter.signal;
    if (signal) {
      const onAbort = (): void => void this.return();
      if (signal.aborted) onAbort();
      else signal.addEventListener('abort', onAbort, { once: true });
      // A long-lived signal shared by many subscriptions must not keep the ended ones.
      this.detach = () => signal.removeEventListener('abort', onAbort);
    }
  }

  private async bind(sessionP: Promise<ClientSession>, parse: (content: Buffer) => ResultEvent | null, wanted: Check): Promise<void> {
    const session = await sessionP;
    const ch = await session.model.createChannel();
    ch.on('error', () => undefined);
    this.channel = ch;
    if (this.ended) return void (await ch.close().catch(() => undefined));
    ch.on('close', () => this.fail(new CdromClientError('CONNECTION_LOST', 'the events subscription lost its broker connection; events may have been missed')));
    await ch.prefetch(PREFETCH);
    const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true, durable: false });
    await ch.bindQueue(queue, EVENTS_EXCHANGE, this.bindingKey);
    await ch.consume(queue, (msg) => {
      if (msg === null) return this.fail(new CdromClientError('CONNECTION_LOST', 'the broker cancelled the events subscription'));
      const event = parse(msg.content);
      // Not a result event of the contract, or not the VM asked for: not ours to yield.
      if (event === null || !wanted(event)) return ch.ack(msg);
      this.buffer.push({ event, msg });
      this.wake();
    });
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async next(): Promise<IteratorResult<ResultEvent>> {
    if (this.ended) return { value: undefined, done: true };
    try {
      await this.bound;
    } catch (err) {
      this.finish();
      throw err;
    }
    for (;;) {
      const head = this.buffer.shift();
      if (head) {
        this.channel?.ack(head.msg);
        return { value: head.event, done: false };
      }
      if (this.failure) {
        this.finish();
        const failure = this.failure;
        this.failure = null;
        throw failure;
      }
      if (this.ended) return { value: undefined, done: true };
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
  }

  async return(): Promise<IteratorResult<ResultEvent>> {
    if (!this.ended) {
      this.finish();
      this.buffer.length = 0;
      this.wake();
      // Closing the channel cancels the consumer, and the auto-delete queue goes with it.
      await this.channel?.close().catch(() => undefined);
    }
    return { value: undefined, done: true };
  }

  /** Ends the subscription because the client closes: no error, iteration just stops. */
  end(): void {
    this.finish();
    this.wake();
  }

  private finish(): void {
    if (this.ended) return;
    this.ended = true;
    this.detach();
    this.onEnd();
  }

  private fail(err: CdromClientError): void {
    if (this.ended) return;
    this.failure = err;
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }
}
