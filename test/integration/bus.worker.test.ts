import { randomUUID } from 'node:crypto';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig, type Config } from '../../src/config.js';
import { commandsQueue, deadQueue } from '../../src/consumers/topology.js';
import { createLogger, silentLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { FakeExecutor, type FakeExecutorOptions } from '../support/fake-executor.js';
import {
  AMQP_URL,
  EventTap,
  closeConnections,
  connectionsNamed,
  command,
  deleteHostQueues,
  drainQueue,
  messageCount,
  openTestConnection,
  publish,
  uniqueHost,
  waitFor,
} from '../support/amqp.js';

/** The bus end to end against the real broker, with an in-process worker and a fake executor. */

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;
let worker: WorkerHandle | null;
let executor: FakeExecutor;

function config(extra: Record<string, string> = {}): Config {
  return loadConfig({
    CDROM_HOST_ID: hostId,
    CDROM_AMQP_URL: AMQP_URL,
    CDROM_HTTP_PORT: '0',
    CDROM_RETRY_BASE_MS: '20',
    CDROM_RETRY_LIMIT: '3',
    CDROM_DRAIN_TIMEOUT_MS: '2000',
    ...extra,
  });
}

async function start(opts: FakeExecutorOptions = {}, extra: Record<string, string> = {}): Promise<WorkerHandle> {
  executor = new FakeExecutor(opts);
  worker = await startWorker({ config: config(extra), logger: process.env['TEST_LOG'] ? createLogger({ level: 'debug' }) : silentLogger(), createParts: () => Promise.resolve({ executor }) });
  return worker;
}

beforeEach(async () => {
  hostId = uniqueHost();
  worker = null;
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
});

afterEach(async () => {
  await worker?.stop('test end');
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

describe('command consumer', () => {
  it('completes a command: event with the contract fields, message acked', async () => {
    await start();
    const cmd = command();
    await publish(ch, hostId, cmd);
    const [event] = await tap.count(1);
    expect(event).toMatchObject({
      type: 'changeCD.completed',
      version: 1,
      commandId: cmd['commandId'],
      hostId,
      vmId: cmd['vmId'],
      drive: 'sdc',
      action: 'load',
      previous: null,
      current: cmd['media'],
      warnings: [],
      error: null,
    });
    expect(Date.parse(event!.finishedAt) - Date.parse(event!.startedAt)).toBe(event!.durationMs);
    await waitFor(async () => (await messageCount(model, commandsQueue(hostId))) === 0, 5000, 'queue empty');
  });

  it('a failed command yields a failed event and is not dead-lettered', async () => {
    await start({ script: () => ({ kind: 'fail', code: 'VOLUME_NOT_FOUND' }) });
    const cmd = command();
    await publish(ch, hostId, cmd);
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.failed', commandId: cmd['commandId'], error: { code: 'VOLUME_NOT_FOUND', retryable: false } });
    expect(await messageCount(model, deadQueue(hostId))).toBe(0);
  });

  it('rejects a malformed command: rejected event + the original, unchanged, in cdrom.dead', async () => {
    await start();
    const vmId = randomUUID();
    const body = JSON.stringify({ ...command({ vmId }), extra: true });
    await publish(ch, hostId, body, { messageId: 'm-1', correlationId: 'c-1', headers: { mine: 'yes' }, type: 'changeCD', appId: 'engine' });
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.rejected', vmId, action: 'none', previous: null, current: null, error: { code: 'INVALID_COMMAND' } });
    await waitFor(async () => (await messageCount(model, deadQueue(hostId))) === 1, 5000, 'dead letter');
    const [dead] = await drainQueue(model, deadQueue(hostId));
    expect(dead!.content.toString()).toBe(body);
    expect(dead!.properties).toMatchObject({ messageId: 'm-1', correlationId: 'c-1', type: 'changeCD', appId: 'engine', contentType: 'application/json', deliveryMode: 2 });
    expect(dead!.properties.headers).toMatchObject({ mine: 'yes', 'x-cdrom-error-code': 'INVALID_COMMAND' });
    expect(String(dead!.properties.headers?.['x-cdrom-error-message'])).toMatch(/extra/);
    expect(executor.calls).toHaveLength(0);
  });

  it('copies the event to reply_to with the same correlation_id', async () => {
    await start();
    const reply = await ch.assertQueue('', { exclusive: true });
    const got = new Promise<{ body: string; correlationId: unknown }>((resolve) => {
      void ch.consume(reply.queue, (m) => m && resolve({ body: m.content.toString(), correlationId: m.properties.correlationId }), { noAck: true });
    });
    const cmd = command();
    await publish(ch, hostId, cmd, { replyTo: reply.queue, correlationId: 'corr-42' });
    const r = await got;
    expect(r.correlationId).toBe('corr-42');
    expect(JSON.parse(r.body)).toMatchObject({ type: 'changeCD.completed', commandId: cmd['commandId'] });
    const [event] = await tap.count(1);
    expect(event!.commandId).toBe(cmd['commandId']);
  });

  it('retries with growing backoff, then a failed event and a dead letter after the budget', async () => {
    await start({ script: () => ({ kind: 'retry', code: 'TIMEOUT' }) });
    const cmd = command();
    await publish(ch, hostId, cmd, { messageId: cmd['commandId'] as string });
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.failed', commandId: cmd['commandId'], error: { code: 'TIMEOUT', retryable: true } });
    // CDROM_RETRY_LIMIT=3: one attempt and three retries.
    expect(executor.calls).toHaveLength(4);
    const gaps = executor.calls.slice(1).map((c, i) => c.at - executor.calls[i]!.at);
    expect(gaps[2]!).toBeGreaterThan(gaps[0]!);
    expect(gaps[0]!).toBeGreaterThanOrEqual(15);
    await waitFor(async () => (await messageCount(model, deadQueue(hostId))) === 1, 5000, 'dead letter');
    const [dead] = await drainQueue(model, deadQueue(hostId));
    expect(dead!.properties.headers).toMatchObject({ 'x-cdrom-error-code': 'TIMEOUT' });
    expect(dead!.properties.messageId).toBe(cmd['commandId']);
  });

  it('200 malformed interleaved with 200 valid: every one answered, the worker keeps going', async () => {
    await start({}, { CDROM_CONCURRENCY: '32' });
    const valid = new Set<string>();
    const malformed = [
      'not json',
      '{"type":"changeCD"}',
      JSON.stringify(command({ vmId: 'nope' })),
      JSON.stringify(command({ media: { path: 'relative.iso' } })),
      JSON.stringify(command({ version: '1' })),
      'x'.repeat(70 * 1024),
    ];
    for (let i = 0; i < 200; i++) {
      const cmd = command({ vmId: randomUUID() });
      valid.add(cmd['commandId'] as string);
      ch.publish('cdrom.commands', hostId, Buffer.from(malformed[i % malformed.length]!), { persistent: true });
      ch.publish('cdrom.commands', hostId, Buffer.from(JSON.stringify(cmd)), { persistent: true });
    }
    await ch.waitForConfirms();
    const t0 = Date.now();
    const events = await tap.count(400, 20_000);
    const took = Date.now() - t0;
    expect(events.filter((e) => e.type === 'changeCD.rejected')).toHaveLength(200);
    const completed = events.filter((e) => e.type === 'changeCD.completed');
    expect(new Set(completed.map((e) => e.commandId))).toEqual(valid);
    await waitFor(async () => (await messageCount(model, deadQueue(hostId))) === 200, 5000, '200 dead letters');
    const dead = await drainQueue(model, deadQueue(hostId));
    expect(dead.every((d) => d.properties.headers?.['x-cdrom-error-code'] === 'INVALID_COMMAND')).toBe(true);
    expect(dead.every((d) => typeof d.properties.headers?.['x-cdrom-error-message'] === 'string')).toBe(true);
    // eslint-disable-next-line no-console -- a measured figure, printed on purpose
    console.info(`400 mixed commands answered in ${took} ms`);
  });

  it('survives the broker closing its connection mid-flight: all commands complete, none lost', async () => {
    // 200 × 150 ms at concurrency 4 keeps commands in flight for ~7 s: rabbitmqctl (≈1 s, more under load) closes the connection mid-flight.
    await start({ delayMs: 150 }, { CDROM_CONCURRENCY: '4' });
    // Looked up first: rabbitmqctl takes about a second per call.
    const pids = await connectionsNamed(`cdrom-worker ${hostId}`);
    expect(pids).toHaveLength(1);
    const ids: string[] = [];
    for (let i = 0; i < 200; i++) {
      const cmd = command();
      ids.push(cmd['commandId'] as string);
      ch.publish('cdrom.commands', hostId, Buffer.from(JSON.stringify(cmd)), { persistent: true });
    }
    await ch.waitForConfirms();
    await tap.count(5);
    await closeConnections(pids);
    const doneBefore = new Set(tap.events.map((e) => e.commandId)).size;
    await tap.until((events) => ids.every((id) => events.some((e) => e.commandId === id && e.type === 'changeCD.completed')), 20_000);
    expect(doneBefore).toBeLessThan(ids.length);
    await waitFor(async () => (await messageCount(model, commandsQueue(hostId))) === 0, 10_000, 'queue empty');
    await waitFor(() => worker!.health.ready, 5000, 'ready again');
    expect(await connectionsNamed(`cdrom-worker ${hostId}`)).toHaveLength(1);
    // Commands in flight when the connection died were redelivered and answered again.
    const replays = executor.calls.length - new Set(executor.calls.map((c) => c.commandId)).size;
    // eslint-disable-next-line no-console -- a measured figure, printed on purpose
    console.info(`broker loss: ${doneBefore} answered before, ${replays} redelivered and answered from the journal`);
  });

  it('serves /healthz, /readyz and /metrics', async () => {
    // Port 0 in the config means "off"; an ephemeral port needs a real number, so pick one.
    const port = 20_000 + Math.floor(Math.random() * 20_000);
    await start({}, { CDROM_HTTP_PORT: String(port) });
    expect((await fetch(`http://127.0.0.1:${port}/healthz`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${port}/readyz`)).status).toBe(200);
    await publish(ch, hostId, command());
    await tap.count(1);
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(/cdrom_commands_total\{outcome="completed",action="load"\} 1/);
    expect(metrics).toMatch(/cdrom_broker_connected 1/);
  });
});
