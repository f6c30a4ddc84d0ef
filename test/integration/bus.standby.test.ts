import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { commandsQueue } from '../../src/consumers/topology.js';
import { createLogger, silentLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { FakeExecutor } from '../support/fake-executor.js';
import { AMQP_URL, EventTap, command, deleteHostQueues, openTestConnection, publish, uniqueHost, waitFor } from '../support/amqp.js';

/**
 * One active worker per host (CONTRACT §9) on the real broker: a second worker for the
 * same host id waits as the standby (not ready, not consuming) and takes over when the
 * first one's connection closes.
 */

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;
const workers: WorkerHandle[] = [];

/** Startup recoveries each worker ran (a standby must run none: the active one may be mid-change). */
const recoveries = new Map<FakeExecutor, number>();

async function start(executor: FakeExecutor): Promise<WorkerHandle> {
  const config = loadConfig({ CDROM_HOST_ID: hostId, CDROM_AMQP_URL: AMQP_URL, CDROM_HTTP_PORT: '0', CDROM_DRAIN_TIMEOUT_MS: '2000', CDROM_STANDBY_POLL_MS: '200' });
  const logger = process.env['TEST_LOG'] ? createLogger({ level: 'debug' }) : silentLogger();
  recoveries.set(executor, 0);
  const recover = (): Promise<void> => (recoveries.set(executor, (recoveries.get(executor) ?? 0) + 1), Promise.resolve());
  const w = await startWorker({ config, logger, createParts: () => Promise.resolve({ executor, recover }) });
  workers.push(w);
  return w;
}

/** Consumers of the host's command queue, as the broker sees them (passive declare). */
async function consumers(): Promise<number> {
  const c = await model.createChannel();
  try {
    return (await c.checkQueue(commandsQueue(hostId))).consumerCount;
  } finally {
    await c.close().catch(() => undefined);
  }
}

beforeEach(async () => {
  hostId = uniqueHost();
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
});

afterEach(async () => {
  for (const w of workers.splice(0)) await w.stop('test end');
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

describe('one active worker per host', () => {
  it('the second worker is a standby: not ready, not consuming; it takes over when the first stops', async () => {
    const first = new FakeExecutor();
    const second = new FakeExecutor();
    const a = await start(first);
    const b = await start(second);
    expect([a.health.ready, b.health.ready]).toEqual([true, false]);
    expect(await consumers()).toBe(1);
    expect([recoveries.get(first), recoveries.get(second)]).toEqual([1, 0]);
    // what the not-ready alert reads: the standby is not ready on purpose, and says so
    const gauges = async (w: WorkerHandle): Promise<string> => (await w.metrics.registry.metrics()).split('\n').filter((l) => /^cdrom_(ready|standby) /.test(l)).join(', ');
    expect([await gauges(a), await gauges(b)]).toEqual(['cdrom_ready 1, cdrom_standby 0', 'cdrom_ready 0, cdrom_standby 1']);
    for (let i = 0; i < 5; i++) await publish(ch, hostId, command());
    await tap.count(5);
    expect([first.calls.length, second.calls.length]).toEqual([5, 0]);

    const t0 = Date.now();
    await a.stop('test: the active worker goes');
    await waitFor(() => b.health.ready, 10_000, 'the standby to take over');
    const takeoverMs = Date.now() - t0;
    expect(takeoverMs).toBeLessThan(10_000);
    expect(recoveries.get(second), 'the new active worker recovers before it consumes').toBe(1);
    expect(await gauges(b)).toBe('cdrom_ready 1, cdrom_standby 0');
    expect(await consumers()).toBe(1);
    const cmd = command();
    await publish(ch, hostId, cmd);
    const events = await tap.count(6);
    expect(events.at(-1)).toMatchObject({ commandId: cmd['commandId'], type: 'changeCD.completed' });
    expect(second.calls.map((c) => c.commandId)).toEqual([cmd['commandId']]);
  });

  it('the lock is the host\u2019s alone: another host id is not held back by it', async () => {
    const a = await start(new FakeExecutor());
    const other = hostId;
    hostId = uniqueHost();
    try {
      const b = await start(new FakeExecutor());
      expect([a.health.ready, b.health.ready]).toEqual([true, true]);
    } finally {
      for (const w of workers.splice(1)) await w.stop('test end');
      await deleteHostQueues(hostId);
      hostId = other;
    }
  });
});
