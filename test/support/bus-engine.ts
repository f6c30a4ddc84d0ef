import { isDeepStrictEqual } from 'node:util';
import { connect, type Channel, type ChannelModel, type ConfirmChannel, type GetMessage } from 'amqplib';
import type { ChangeCdCommand, ResultEvent } from '../../src/contracts/schemas.js';
import { COMMANDS_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE, commandsQueue, deadQueue, removeHostQueues } from '../../src/consumers/topology.js';
import { sleep, waitUntil } from './e2e.js';

/**
 * The engine's side of one host on a broker that may go away (the private node of
 * bus-faults.ts): commands out, result events in, dead letters read, and what the events
 * must show beyond faults.ts' eventProblems. Free of vitest, like e2e.ts.
 */

/** A result event as it arrived, with what the AMQP message said about it. */
export interface ArrivedEvent {
  readonly event: ResultEvent;
  readonly messageId: string | undefined;
  readonly routingKey: string;
  /** test clock, epoch ms */
  readonly at: number;
}

/**
 * The engine's side of a host on the private broker: publishes commands (persistent,
 * mandatory, `message_id` = commandId, confirmed) and collects the host's result events
 * in a durable quorum queue of its own, so that none is lost while the broker restarts
 * or this connection is down: it reconnects by itself (every 200 ms) after `stop_app`.
 */
export class BusEngine {
  readonly arrived: ArrivedEvent[] = [];
  private model: ChannelModel | null = null;
  private pub: ConfirmChannel | null = null;
  private closing = false;
  private reconnecting: Promise<void> | null = null;
  private readonly returned = new Set<string>();
  private wake: (() => void)[] = [];
  /** times this engine lost its connection */
  losses = 0;

  private constructor(
    readonly url: string,
    readonly hostId: string,
    readonly eventsQueue: string,
  ) {}

  static async open(url: string, hostId: string): Promise<BusEngine> {
    const e = new BusEngine(url, hostId, `cdw-e2e-events.${hostId}`);
    await e.connect();
    return e;
  }

  get events(): ResultEvent[] {
    return this.arrived.map((a) => a.event);
  }

  private async connect(): Promise<void> {
    const model = await connect(this.url, { noDelay: true });
    model.on('error', () => undefined);
    try {
      const pub = await model.createConfirmChannel();
      pub.on('error', () => undefined);
      pub.on('return', (msg: { properties: { messageId?: unknown } }) => {
        if (typeof msg.properties.messageId === 'string') this.returned.add(msg.properties.messageId);
      });
      await pub.assertExchange(COMMANDS_EXCHANGE, 'direct', { durable: true });
      await pub.assertExchange(EVENTS_EXCHANGE, 'topic', { durable: true });
      await pub.assertExchange(DEAD_EXCHANGE, 'direct', { durable: true });
      const sub: Channel = await model.createChannel();
      sub.on('error', () => undefined);
      await sub.assertQueue(this.eventsQueue, { durable: true, arguments: { 'x-queue-type': 'quorum' } });
      await sub.bindQueue(this.eventsQueue, EVENTS_EXCHANGE, `${this.hostId}.#`);
      // noAck: an event is handed over once; nothing comes back to this engine after a reconnect
      await sub.consume(
        this.eventsQueue,
        (msg) => {
          if (msg === null) return;
          const messageId: unknown = msg.properties.messageId;
          this.arrived.push({
            event: JSON.parse(msg.content.toString('utf8')) as ResultEvent,
            messageId: typeof messageId === 'string' ? messageId : undefined,
            routingKey: msg.fields.routingKey,
            at: Date.now(),
          });
          for (const w of this.wake.splice(0)) w();
        },
        { noAck: true },
      );
      model.on('close', () => {
        if (this.model !== model) return;
        this.model = null;
        this.pub = null;
        this.losses++;
        if (!this.closing) void this.reconnect();
      });
      this.model = model;
      this.pub = pub;
    } catch (err) {
      await model.close().catch(() => undefined);
      throw err;
    }
  }

  private reconnect(): Promise<void> {
    this.reconnecting ??= (async () => {
      const deadline = Date.now() + 120_000;
      while (!this.closing && this.model === null) {
        try {
          await this.connect();
        } catch (err) {
          if (Date.now() > deadline) throw err;
          await sleep(200);
        }
      }
    })().finally(() => {
      this.reconnecting = null;
    });
    return this.reconnecting;
  }

  /** Connected again (after `stop_app`/`start_app`), waiting at most `timeoutMs`. */
  async connected(timeoutMs = 60_000): Promise<void> {
    await waitUntil(() => this.model !== null, timeoutMs, 'the engine to reconnect to the broker', 50);
  }

  async send(command: ChangeCdCommand): Promise<void> {
    if (this.pub === null) await this.connected();
    const pub = this.pub;
    if (pub === null) throw new Error('engine not connected');
    pub.publish(COMMANDS_EXCHANGE, this.hostId, Buffer.from(JSON.stringify(command)), {
      persistent: true,
      mandatory: true,
      contentType: 'application/json',
      messageId: command.commandId,
    });
    await pub.waitForConfirms();
    if (this.returned.has(command.commandId)) throw new Error(`command ${command.commandId} was unroutable: is the worker's queue declared?`);
  }

  eventsFor(commandId: string): ResultEvent[] {
    return this.events.filter((e) => e.commandId === commandId);
  }

  /** Resolves once every id has at least one event; false after `timeoutMs`. */
  async settle(ids: readonly string[], timeoutMs: number): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const have = new Set(this.events.map((e) => e.commandId));
      if (ids.every((id) => have.has(id))) return true;
      const left = deadline - Date.now();
      if (left <= 0) return false;
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 250));
        this.wake.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  /** Resolves once `pred` holds for the events that arrived (checked at every arrival). */
  async until(pred: (arrived: readonly ArrivedEvent[]) => boolean, timeoutMs: number, what: string): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this.arrived)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${this.arrived.length} events)`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, Math.min(left, 250));
        this.wake.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  private async withChannel<T>(fn: (ch: Channel) => Promise<T>): Promise<T> {
    if (this.model === null) await this.connected();
    const model = this.model;
    if (model === null) throw new Error('engine not connected');
    const ch = await model.createChannel();
    ch.on('error', () => undefined);
    try {
      return await fn(ch);
    } finally {
      await ch.close().catch(() => undefined);
    }
  }

  /** Messages waiting in `cdrom.commands.<hostId>` (ready, not delivered). */
  commandsWaiting(): Promise<number> {
    return this.withChannel(async (ch) => (await ch.checkQueue(commandsQueue(this.hostId))).messageCount);
  }

  /** Takes every message of `cdrom.dead.<hostId>` (the queue ends empty). */
  takeDeadLetters(): Promise<GetMessage[]> {
    return this.withChannel(async (ch) => {
      const out: GetMessage[] = [];
      for (;;) {
        const m = await ch.get(deadQueue(this.hostId), { noAck: true });
        if (m === false) return out;
        out.push(m);
      }
    });
  }

  /** Closes the connection and deletes the host's queues and this engine's event queue. */
  async close(): Promise<void> {
    this.closing = true;
    await this.reconnecting?.catch(() => undefined);
    await this.model?.close().catch(() => undefined);
    this.model = null;
    const model = await connect(this.url, { noDelay: true });
    model.on('error', () => undefined);
    try {
      await removeHostQueues(model, this.hostId);
      const ch = await model.createChannel();
      ch.on('error', () => undefined);
      await ch.deleteQueue(this.eventsQueue).catch(() => undefined);
      await ch.close().catch(() => undefined);
    } finally {
      await model.close().catch(() => undefined);
    }
  }
}

// ---- what the events must show, beyond faults.ts' eventProblems ---------------------------

/**
 * Every repeat of a commandId is its first event again, whole (deep equality of the JSON
 * bodies, timestamps included): [] when so, readable lines otherwise. CONTRACT 4 itself
 * asks for the same outcome, action, previous and current (faults.ts' eventProblems).
 */
export function repeatProblems(arrived: readonly ArrivedEvent[], ids: readonly string[], name: (commandId: string) => string = (id) => id): string[] {
  const problems: string[] = [];
  for (const id of ids) {
    const mine = arrived.filter((a) => a.event.commandId === id);
    const first = mine[0];
    if (first === undefined) continue;
    mine.forEach((a, i) => {
      if (i === 0 || isDeepStrictEqual(a.event, first.event)) return;
      const diff = ([...new Set([...Object.keys(first.event), ...Object.keys(a.event)])] as (keyof ResultEvent)[]).filter((k) => !isDeepStrictEqual(first.event[k], a.event[k]));
      problems.push(`${name(id)}: repeat ${i} differs from the first event in ${diff.map((k) => `${k} (${JSON.stringify(first.event[k])} then ${JSON.stringify(a.event[k])})`).join(', ')}`);
    });
  }
  return problems;
}

/** Events whose AMQP `message_id` is not their commandId. */
export function messageIdProblems(arrived: readonly ArrivedEvent[], ids: readonly string[], name: (commandId: string) => string = (id) => id): string[] {
  const wanted = new Set(ids);
  return arrived.filter((a) => a.event.commandId !== null && wanted.has(a.event.commandId) && a.messageId !== a.event.commandId).map((a) => `${name(a.event.commandId as string)}: message_id ${a.messageId ?? '(none)'}`);
}

/** commandIds with more than one event, with their counts. */
export function repeatCounts(arrived: readonly ArrivedEvent[], ids: readonly string[]): Map<string, number> {
  const out = new Map<string, number>();
  for (const id of ids) {
    const n = arrived.filter((a) => a.event.commandId === id).length;
    if (n > 1) out.set(id, n);
  }
  return out;
}

/** `GET <path>` on the worker's HTTP port: the status, 0 when there was no answer within a second. */
export async function httpStatus(port: number, path: '/readyz' | '/healthz'): Promise<number> {
  try {
    const res = await fetch(`http://127.0.0.1:${port}${path}`, { signal: AbortSignal.timeout(1000) });
    await res.arrayBuffer();
    return res.status;
  } catch {
    return 0;
  }
}
