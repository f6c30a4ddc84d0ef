import { randomBytes } from 'node:crypto';
import { afterEach, describe, expect, it } from 'vitest';
import { Bus } from '../../src/consumers/connection.js';
import { ensureTopology, commandsQueue } from '../../src/consumers/topology.js';
import { silentLogger } from '../../src/infra/logging.js';
import { AMQP_URL, deleteHostQueues, openTestConnection, uniqueHost, waitFor } from '../support/amqp.js';

/** The reconnecting connection itself: node list, nack handling, fixed queue arguments. */

const cleanups: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
});

function bus(urls: string[], onConnected?: (up: boolean) => void): Bus {
  const b = new Bus({ urls, logger: silentLogger(), reconnectInitialMs: 20, reconnectMaxMs: 200, ...(onConnected ? { onConnected } : {}) });
  cleanups.push(() => b.close());
  return b;
}

describe('Bus', () => {
  it('tries the broker list in turn', async () => {
    const b = bus(['amqp://guest:guest@127.0.0.1:1', AMQP_URL]);
    const session = await b.start();
    expect(session.url).toBe(AMQP_URL);
    expect(b.connected).toBe(true);
  });

  it('answers a publisher nack with a new connection and republishes there', async () => {
    const { model, ch } = await openTestConnection();
    cleanups.push(() => model.close());
    const queue = `t-nack-${randomBytes(4).toString('hex')}`;
    // A full queue with reject-publish makes the broker nack every publish routed to it.
    await ch.assertQueue(queue, { durable: false, arguments: { 'x-max-length': 0, 'x-overflow': 'reject-publish' } });
    cleanups.push(async () => {
      await ch.deleteQueue(queue).catch(() => undefined);
    });
    let connects = 0;
    const b = bus([AMQP_URL], (up) => (connects += up ? 1 : 0));
    await b.start();
    let confirmed = false;
    const published = b.publish('', queue, Buffer.from('x'), {}).then(() => (confirmed = true));
    await waitFor(() => connects >= 3, 10_000, 'two reconnects after nacks');
    expect(confirmed).toBe(false);
    // Once the queue is gone the message is routed nowhere, which the broker acks.
    await ch.deleteQueue(queue);
    await published;
    expect(confirmed).toBe(true);
  });

  it('while publishes are not confirmed, publishHealthy is false and whenPublishing defers starts until one is', async () => {
    const { model, ch } = await openTestConnection();
    cleanups.push(() => model.close());
    const queue = `t-nack-${randomBytes(4).toString('hex')}`;
    await ch.assertQueue(queue, { durable: false, arguments: { 'x-max-length': 0, 'x-overflow': 'reject-publish' } });
    cleanups.push(async () => {
      await ch.deleteQueue(queue).catch(() => undefined);
    });
    let connects = 0;
    const b = bus([AMQP_URL], (up) => (connects += up ? 1 : 0));
    const changes: boolean[] = [];
    b.onPublishHealth((healthy) => changes.push(healthy));
    // What a consumer's setup hook does: start consuming only while events get confirmed.
    const starts: Array<{ generation: number; healthy: boolean }> = [];
    b.addSetup((s) => b.whenPublishing(s, () => Promise.resolve(void starts.push({ generation: s.generation, healthy: b.publishHealthy }))));
    const first = await b.start();
    expect(starts).toEqual([{ generation: first.generation, healthy: true }]);
    const published = b.publish('', queue, Buffer.from('x'), {});
    await waitFor(() => connects >= 3, 10_000, 'two reconnects after nacks');
    expect(b.publishHealthy).toBe(false);
    // Reconnected twice, set up twice, started on neither.
    expect(starts).toHaveLength(1);
    await ch.deleteQueue(queue);
    await published;
    expect(b.publishHealthy).toBe(true);
    expect(changes).toEqual([false, true]);
    // Started once more, on the session the publish was confirmed on, which is the live one.
    await waitFor(() => starts.length === 2, 5000, 'the deferred start');
    expect(starts[1]).toEqual({ generation: (await b.ready()).generation, healthy: true });
  });

  it("publishes as the session's own broker user: user_id stamped over whatever the options carried", async () => {
    const { model, ch } = await openTestConnection();
    cleanups.push(() => model.close());
    const { queue } = await ch.assertQueue('', { exclusive: true });
    const b = bus([AMQP_URL]);
    const session = await b.start();
    expect(session.user).toBe('guest');
    // A foreign user_id would close the confirm channel (406) and, with it, the session.
    await b.publish('', queue, Buffer.from('x'), { userId: 'engine', messageId: 'm-1' });
    const got = await ch.get(queue, { noAck: true });
    expect(got && got.properties).toMatchObject({ userId: 'guest', messageId: 'm-1' });
    expect(b.connected).toBe(true);
  });

  it('declares queues with a fixed argument set, so a restart with other settings still starts', async () => {
    const hostId = uniqueHost();
    cleanups.push(() => deleteHostQueues(hostId));
    const { model } = await openTestConnection();
    cleanups.push(() => model.close());
    const first = await model.createChannel();
    await ensureTopology(first, hostId, true);
    await ensureTopology(first, hostId, true);
    const check = await model.createChannel();
    await ensureTopology(check, hostId, false);
    expect((await check.checkQueue(commandsQueue(hostId))).queue).toBe(commandsQueue(hostId));
  });

  it('only checks the topology when told not to declare it, and fails on a missing object', async () => {
    const { model } = await openTestConnection();
    cleanups.push(() => model.close());
    const ch = await model.createChannel();
    ch.on('error', () => undefined);
    await expect(ensureTopology(ch, uniqueHost(), false)).rejects.toThrow(/NOT_FOUND/);
  });
});
