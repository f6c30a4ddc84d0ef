import type { Channel } from 'amqplib';

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
    await ch.checkExchange(COMMANDS_EXCHANGE);
    await ch.checkExchange(EVENTS_EXCHANGE);
    await ch.checkExchange(DEAD_EXCHANGE);
    await ch.checkQueue(commandsQueue(hostId));
    await ch.checkQueue(deadQueue(hostId));
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
