import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import type { ChannelModel, ConfirmChannel, GetMessage } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { commandsQueue, deadQueue, ensureTopology } from '../../src/consumers/topology.js';
import { command, deleteHostQueues, openTestConnection, publish, uniqueHost, waitFor } from '../support/amqp.js';

/**
 * The broker-side backstop (scripts/rabbitmq-backstop) on the real broker: a command the
 * broker has delivered more than the limit is dead-lettered into cdrom.dead.<host>, not
 * dropped, and existing queues get it without being re-created.
 */

const run = promisify(execFile);
const SCRIPT = resolve(import.meta.dirname, '../../scripts/rabbitmq-backstop');

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;

beforeEach(async () => {
  hostId = uniqueHost();
  ({ model, ch } = await openTestConnection());
});

afterEach(async () => {
  await run(SCRIPT, ['--host', hostId, '--delete']).catch(() => undefined);
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

describe('broker backstop policy', () => {
  it('dead-letters a command delivered more than the limit into cdrom.dead.<host>, on a queue that already existed', async () => {
    // the queue exists first, as on a host that ran before the backstop was added
    const admin = await model.createChannel();
    await ensureTopology(admin, hostId, true);
    const { stdout } = await run(SCRIPT, ['--host', hostId, '--delivery-limit', '2']);
    expect(stdout).toMatch(/dead-letter to cdrom\.dead after 2 deliveries/);
    const cmd = command();
    await publish(ch, hostId, cmd, { messageId: 'backstop-1' });

    // a consumer that dies with it every time: each return counts as a delivery
    const consumer = await model.createChannel();
    let deliveries = 0;
    for (let i = 0; i < 10; i++) {
      let msg: GetMessage | false = false;
      await waitFor(async () => (msg = await consumer.get(commandsQueue(hostId), { noAck: false })) !== false || (await admin.checkQueue(deadQueue(hostId))).messageCount > 0, 5_000, 'the command or its dead letter');
      if (msg === false) break;
      deliveries += 1;
      consumer.nack(msg, false, true);
    }
    expect(deliveries).toBe(3);
    const dead = await admin.get(deadQueue(hostId), { noAck: true });
    expect(dead).not.toBe(false);
    if (dead === false) return;
    expect(JSON.parse(dead.content.toString('utf8'))).toEqual(cmd);
    expect(dead.properties.messageId).toBe('backstop-1');
    expect(JSON.stringify(dead.properties.headers)).toMatch(/delivery_limit/);
    expect((await admin.checkQueue(commandsQueue(hostId))).messageCount).toBe(0);
  });

  it('refuses a bad host id or limit before touching the broker', async () => {
    await expect(run(SCRIPT, ['--host', 'bad host'])).rejects.toMatchObject({ code: 1 });
    await expect(run(SCRIPT, ['--delivery-limit', '0'])).rejects.toMatchObject({ code: 1 });
  });
});
