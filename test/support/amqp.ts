import { execFile } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { promisify } from 'node:util';
import { connect, type Channel, type ChannelModel, type ConfirmChannel, type GetMessage, type MessageProperties, type Options } from 'amqplib';
import type { ResultEvent } from '../../src/contracts/schemas.js';
import { COMMANDS_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE, removeHostQueues } from '../../src/consumers/topology.js';

/** Helpers for the integration tests against the real broker on 127.0.0.1:5672. */

export const AMQP_URL = 'amqp://guest:guest@127.0.0.1:5672';
const run = promisify(execFile);

export const uniqueHost = (): string => `t-${randomBytes(5).toString('hex')}`;

export async function openTestConnection(): Promise<{ model: ChannelModel; ch: ConfirmChannel }> {
  const model = await connect(AMQP_URL, { noDelay: true });
  model.on('error', () => undefined);
  const ch = await model.createConfirmChannel();
  ch.on('error', () => undefined);
  await ch.assertExchange(COMMANDS_EXCHANGE, 'direct', { durable: true });
  await ch.assertExchange(EVENTS_EXCHANGE, 'topic', { durable: true });
  await ch.assertExchange(DEAD_EXCHANGE, 'direct', { durable: true });
  return { model, ch };
}

/** Deletes a host's queues; safe to call when they do not exist or the test failed. */
export async function deleteHostQueues(hostId: string): Promise<void> {
  const model = await connect(AMQP_URL, { noDelay: true });
  try {
    await removeHostQueues(model, hostId);
  } finally {
    await model.close().catch(() => undefined);
  }
}

export function command(overrides: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    type: 'changeCD',
    version: 1,
    commandId: randomUUID(),
    vmId: randomUUID(),
    drive: 'sdc',
    media: { poolID: randomUUID(), domainID: randomUUID(), imageID: randomUUID(), volumeID: randomUUID() },
    ...overrides,
  };
}

export async function publish(ch: ConfirmChannel, hostId: string, body: unknown, props: Options.Publish = {}): Promise<void> {
  const content = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  ch.publish(COMMANDS_EXCHANGE, hostId, content, { persistent: true, contentType: 'application/json', ...props });
  await ch.waitForConfirms();
}

/** Collects a host's result events through an exclusive queue bound before the test sends. */
export class EventTap {
  readonly events: ResultEvent[] = [];
  /** The AMQP properties of each event, in the same order. */
  readonly properties: MessageProperties[] = [];
  private waiters: Array<() => void> = [];

  private constructor(readonly ch: Channel) {}

  static async open(model: ChannelModel, hostId: string): Promise<EventTap> {
    const ch = await model.createChannel();
    const tap = new EventTap(ch);
    const { queue } = await ch.assertQueue('', { exclusive: true, autoDelete: true });
    await ch.bindQueue(queue, EVENTS_EXCHANGE, `${hostId}.changeCD.*`);
    await ch.consume(
      queue,
      (msg) => {
        if (msg === null) return;
        tap.events.push(JSON.parse(msg.content.toString('utf8')) as ResultEvent);
        tap.properties.push(msg.properties);
        for (const w of tap.waiters) w();
      },
      { noAck: true },
    );
    return tap;
  }

  /** Waits until `pred` holds for the collected events. */
  async until(pred: (events: ResultEvent[]) => boolean, timeoutMs = 10_000): Promise<ResultEvent[]> {
    const deadline = Date.now() + timeoutMs;
    while (!pred(this.events)) {
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out with ${this.events.length} events: ${JSON.stringify(this.events.slice(-3))}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, Math.min(left, 200));
        this.waiters.push(() => {
          clearTimeout(t);
          resolve();
        });
      });
      this.waiters = [];
    }
    return this.events;
  }

  count(n: number, timeoutMs?: number): Promise<ResultEvent[]> {
    return this.until((e) => e.length >= n, timeoutMs);
  }
}

/** Takes every message of a queue (acked: the queue ends empty). */
export async function drainQueue(model: ChannelModel, queue: string): Promise<GetMessage[]> {
  const ch = await model.createChannel();
  const out: GetMessage[] = [];
  for (;;) {
    const m = await ch.get(queue, { noAck: true });
    if (m === false) break;
    out.push(m);
  }
  await ch.close();
  return out;
}

export async function messageCount(model: ChannelModel, queue: string): Promise<number> {
  const ch = await model.createChannel();
  const { messageCount: n } = await ch.checkQueue(queue);
  await ch.close();
  return n;
}

/** Broker-side ids of the connections whose client named itself `name`. */
export async function connectionsNamed(name: string): Promise<string[]> {
  const { stdout } = await run('rabbitmqctl', ['-q', 'list_connections', 'pid', 'client_properties'], { timeout: 30_000 });
  return stdout
    .split('\n')
    .filter((line) => line.includes(`"${name}"`))
    .map((line) => line.split('\t')[0] ?? '')
    .filter((pid) => pid.startsWith('<'));
}

/**
 * What `rabbitmqctl close_all_connections` does to the worker, limited to the given
 * connections so the other test files (and engineers) sharing the broker are left alone.
 */
export async function closeConnections(pids: readonly string[]): Promise<void> {
  for (const pid of pids) await run('rabbitmqctl', ['-q', 'close_connection', pid, 'test: broker connection lost'], { timeout: 30_000 });
}

export async function waitFor(pred: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await pred())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}
