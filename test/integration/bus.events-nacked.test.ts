import { randomBytes } from 'node:crypto';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { EVENTS_EXCHANGE, commandsQueue } from '../../src/consumers/topology.js';
import { silentLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { AMQP_URL, EventTap, command, deleteHostQueues, messageCount, openTestConnection, publish, uniqueHost, waitFor } from '../support/amqp.js';
import { createLogger } from '../../src/infra/logging.js';

/**
 * A broker that keeps nacking the worker's events: the worker reconnects with backoff
 * (ENVIRONMENT.md: a nack is answered by a new connection) but takes no new commands
 * until an event is confirmed again, instead of consuming, nacking and requeuing its
 * whole prefetch at every reconnect.
 *
 * What decides it is Bus.whenPublishing (its own test in bus.connection.test.ts). Here,
 * with the host lock taken before consuming, a classic queue's nack of the republished
 * event also happens to arrive before the new session's consume; before the lock, this
 * test caught the cycle (the first commands delivered 5 times in 2.5 s).
 */

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let worker: WorkerHandle | null;
let blocker: string;

beforeEach(async () => {
  hostId = uniqueHost();
  worker = null;
  blocker = `t-block-${randomBytes(4).toString('hex')}`;
  ({ model, ch } = await openTestConnection());
});

afterEach(async () => {
  await ch.deleteQueue(blocker).catch(() => undefined);
  await worker?.stop('test end');
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

describe('events nacked by the broker', () => {
  it('the worker stops consuming (not ready) until an event is confirmed, then completes everything', async () => {
    const tap = await EventTap.open(model, hostId);
    // A full queue with reject-publish bound to the host's events: every event is nacked.
    // (A classic queue: a quorum queue applies the limit only approximately.)
    await ch.assertQueue(blocker, { durable: false, arguments: { 'x-max-length': 0, 'x-overflow': 'reject-publish' } });
    await ch.bindQueue(blocker, EVENTS_EXCHANGE, `${hostId}.#`);
    const executor = new FakeExecutor();
    const config = loadConfig({ CDROM_HOST_ID: hostId, CDROM_AMQP_URL: AMQP_URL, CDROM_HTTP_PORT: '0', CDROM_CONCURRENCY: '2', CDROM_PREFETCH: '2', CDROM_DRAIN_TIMEOUT_MS: '1000' });
    worker = await startWorker({ config, logger: process.env['TEST_LOG'] ? createLogger({ level: 'debug' }) : silentLogger(), createParts: () => Promise.resolve({ executor }) });
    const cmds = Array.from({ length: 6 }, () => command());
    for (const c of cmds) await publish(ch, hostId, c);

    await waitFor(() => !worker!.health.ready, 5000, 'not ready after the first nack');
    // Reconnects back off 100, 200, 400, 800 ms…: in 2.5 s a worker that re-attached at
    // each one would have run the requeued prefetch again several times.
    await new Promise((r) => setTimeout(r, 2500));
    expect(worker.health.ready).toBe(false);
    // Only the first prefetch (2) ever ran (their attempts may repeat while they wait to settle).
    expect(new Set(executor.calls.map((c) => c.commandId)).size).toBeLessThanOrEqual(2);
    // And nothing was taken again: every command is in the queue, none delivered more than
    // that once (quorum queues count returns in x-delivery-count). A worker that re-attached
    // at each reconnect would hold some now, and have returned the first two several times.
    const peek = await model.createChannel();
    const held: number[] = [];
    for (let i = 0; i < 6; i++) {
      const m = await peek.get(commandsQueue(hostId), { noAck: false });
      if (m === false) break;
      held.push(Number(m.properties.headers?.['x-delivery-count'] ?? 0));
    }
    peek.nackAll(true);
    await peek.close();
    expect(held).toHaveLength(6);
    expect(Math.max(...held)).toBeLessThanOrEqual(1);

    await ch.deleteQueue(blocker);
    await tap.until((events) => cmds.every((c) => events.some((e) => e.commandId === c['commandId'] && e.type === 'changeCD.completed')), 15_000);
    await waitFor(() => worker!.health.ready, 5000, 'ready again');
    await waitFor(async () => (await messageCount(model, commandsQueue(hostId))) === 0, 5000, 'queue empty');
    // The held events went out; the redelivered commands were answered again (repeats allowed).
    expect(new Set(executor.calls.map((c) => c.commandId)).size).toBe(6);
  });
});
