import type { Channel, ChannelModel } from 'amqplib';

/** CONTRACT.md section 2: the broker objects, by name. */
export const COMMANDS_EXCHANGE = 'cdrom.commands';
export const EVENTS_EXCHANGE = 'cdrom.events';
export const DEAD_EXCHANGE = 'cdrom.dead';

export const commandsQueue = (hostId: string): string => `cdrom.commands.${hostId}`;
export const deadQueue = (hostId: string): string => `cdrom.dead.${hostId}`;
export const eventRoutingKey = (hostId: string, outcome: string): string => `${hostId}.changeCD.${outcome}`;

/**
 * Queue arguments cannot change once a queue exists (406 closes the channel), so the set
 * is fixed: nothing configurable (retry budget, TTLs, delivery limits) ever goes here.
 */
const QUEUE_ARGS = Object.freeze({ 'x-queue-type': 'quorum' });

/**
 * Declare (or, when an administrator owns the topology, only check) section 2's objects.
 * Idempotent; run on every (re)connect.
 */
export async function ensureTopology(ch: Channel, hostId: string, declare: boolean): Promise<void> {
  if (!declare) {
    // Passive declares: they need no configure permission (a least-privilege host user
    // has none), and a missing object closes the channel with 404, named below.
    await checked('exchange', COMMANDS_EXCHANGE, () => ch.checkExchange(COMMANDS_EXCHANGE));
    await checked('exchange', EVENTS_EXCHANGE, () => ch.checkExchange(EVENTS_EXCHANGE));
    await checked('exchange', DEAD_EXCHANGE, () => ch.checkExchange(DEAD_EXCHANGE));
    await checked('queue', commandsQueue(hostId), () => ch.checkQueue(commandsQueue(hostId)));
    await checked('queue', deadQueue(hostId), () => ch.checkQueue(deadQueue(hostId)));
    return;
  }
  await ch.assertExchange(COMMANDS_EXCHANGE, 'direct', { durable: true });
  await ch.assertExchange(EVENTS_EXCHANGE, 'topic', { durable: true });
  await ch.assertExchange(DEAD_EXCHANGE, 'direct', { durable: true });
  await ch.assertQueue(commandsQueue(hostId), { durable: true, arguments: { ...QUEUE_ARGS } });
  await ch.bindQueue(commandsQueue(hostId), COMMANDS_EXCHANGE, hostId);
  await ch.assertQueue(deadQueue(hostId), { durable: true, arguments: { ...QUEUE_ARGS } });
  await ch.bindQueue(deadQueue(hostId), DEAD_EXCHANGE, hostId);
}

/** A broker object that CDROM_DECLARE_TOPOLOGY=0 found missing; `code` stays the AMQP 404. */
export class TopologyMissingError extends Error {
  override readonly name = 'TopologyMissingError';
  readonly code = 404;
  constructor(kind: 'exchange' | 'queue', objectName: string) {
    super(`NOT_FOUND: ${kind} ${objectName} does not exist (CDROM_DECLARE_TOPOLOGY=0 only checks it)`);
  }
}

async function checked(kind: 'exchange' | 'queue', objectName: string, check: () => Promise<unknown>): Promise<void> {
  try {
    await check();
  } catch (err) {
    if ((err as { code?: unknown }).code === 404) throw new TopologyMissingError(kind, objectName);
    throw err;
  }
}

/**
 * Delete a host's two queues (a decommissioned host, a test's own host id). Missing
 * queues are fine; each delete gets its own channel, since a failed one closes it.
 */
export async function removeHostQueues(model: ChannelModel, hostId: string): Promise<void> {
  for (const q of [commandsQueue(hostId), deadQueue(hostId)]) {
    const ch = await model.createChannel();
    ch.on('error', () => undefined);
    await ch.deleteQueue(q).catch(() => undefined);
    await ch.close().catch(() => undefined);
  }
}
