import { randomUUID } from 'node:crypto';
import { getEventListeners } from 'node:events';
import { propagation } from '@opentelemetry/api';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { connect, isCdromClientError, type CdromClient, type ChangeRequest, type ResultEvent } from '../../src/client/index.js';
import { loadConfig } from '../../src/config.js';
import { commandsQueue, ensureTopology } from '../../src/consumers/topology.js';
import { createLogger, silentLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { EffectLog, FakeExecutor, type FakeExecutorOptions } from '../support/fake-executor.js';
import { AMQP_URL, EventTap, closeConnections, connectionsNamed, deleteHostQueues, openTestConnection, uniqueHost, waitFor } from '../support/amqp.js';

/**
 * The engine-side client (cdrom-worker/client) against the real broker and an in-process
 * worker with a fake executor.
 */

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;
let worker: WorkerHandle | null;
let executor: FakeExecutor;
let effects: EffectLog;
let client: CdromClient | null;
let connectionName: string;

async function start(opts: FakeExecutorOptions = {}): Promise<void> {
  effects = new EffectLog();
  executor = new FakeExecutor({ effects, ...opts });
  // CDROM_TRUSTED_SENDERS=guest: a command without the client's user_id would be rejected
  // UNAUTHORIZED_SENDER, so every completed event below also shows user_id was set.
  const config = loadConfig({ CDROM_HOST_ID: hostId, CDROM_AMQP_URL: AMQP_URL, CDROM_HTTP_PORT: '0', CDROM_TRUSTED_SENDERS: 'guest', CDROM_DRAIN_TIMEOUT_MS: '2000' });
  worker = await startWorker({ config, logger: process.env['TEST_LOG'] ? createLogger({ level: 'debug' }) : silentLogger(), createParts: () => Promise.resolve({ executor }) });
}

const pdiv = (): ChangeRequest['media'] => ({ poolID: randomUUID(), domainID: randomUUID(), imageID: randomUUID(), volumeID: randomUUID() });
/** What CONTRACT §4 keeps identical across repeats (the fake's journal keeps no timestamps). */
const essence = (e: ResultEvent | undefined): Partial<ResultEvent> => {
  const { type, commandId, hostId: host, vmId, drive, action, previous, current, error, warnings } = e ?? ({} as Partial<ResultEvent>);
  return { type, commandId, hostId: host, vmId, drive, action, previous, current, error, warnings };
};
const request = (media: ChangeRequest['media'] = pdiv()): ChangeRequest => ({ vmId: randomUUID(), drive: 'sdc', media });

beforeEach(async () => {
  hostId = uniqueHost();
  worker = null;
  connectionName = `cdrom-client ${hostId}`;
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
  client = await connect(AMQP_URL, {}, { connectionName });
});

afterEach(async () => {
  await client?.close();
  await worker?.stop('test end');
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

describe('cdrom-worker/client changeCD', () => {
  it('resolves with the completed event, delivered by direct reply-to', async () => {
    await start();
    const req = request();
    const commandId = randomUUID();
    const event = await client!.changeCD(hostId, req, { commandId, timeoutMs: 10_000 });
    expect(event).toMatchObject({ type: 'changeCD.completed', commandId, hostId, vmId: req.vmId, drive: 'sdc', action: 'load', previous: null, current: req.media, error: null });
    // The same event went to cdrom.events, published as the worker with message_id = commandId.
    const [published] = await tap.count(1);
    expect(published).toEqual(event);
    expect(tap.properties[0]).toMatchObject({ messageId: commandId, correlationId: commandId });
  });

  it('a failed and a rejected command resolve with their events (an answer, not an error)', async () => {
    await start({ script: () => ({ kind: 'fail', code: 'VOLUME_NOT_FOUND' }) });
    const failed = await client!.changeCD(hostId, request(), { timeoutMs: 10_000 });
    expect(failed).toMatchObject({ type: 'changeCD.failed', error: { code: 'VOLUME_NOT_FOUND', retryable: false } });
    const rejected = await client!.changeCD(hostId, request({ path: '/../escape.iso' }), { timeoutMs: 10_000 });
    expect(rejected).toMatchObject({ type: 'changeCD.rejected', error: { code: 'INVALID_COMMAND' } });
  });

  it('a re-sent commandId yields an identical event and changes the drive once', async () => {
    await start();
    const req = request();
    const commandId = randomUUID();
    const first = await client!.changeCD(hostId, req, { commandId, timeoutMs: 10_000 });
    const again = await client!.changeCD(hostId, req, { commandId, timeoutMs: 10_000 });
    expect(essence(again)).toEqual(essence(first));
    expect(effects.count(commandId)).toBe(1);
  });

  it('two calls with one commandId, at once: both resolve with the one answer, the drive changes once', async () => {
    await start({ delayMs: 200 });
    const req = request();
    const commandId = randomUUID();
    // The worker runs the first delivery and answers the second from its journal: two
    // reply copies for one correlation_id; the first settles both calls, the second is dropped.
    const [a, b] = await Promise.all([client!.changeCD(hostId, req, { commandId, timeoutMs: 10_000 }), client!.changeCD(hostId, req, { commandId, timeoutMs: 10_000 })]);
    expect(b).toBe(a);
    expect(effects.count(commandId)).toBe(1);
    await tap.count(2);
  });

  it('concurrent calls for several drives each get their own event; a shared signal keeps no listeners', async () => {
    await start({ delayMs: 50 });
    const shared = new AbortController();
    const reqs = Array.from({ length: 20 }, () => request());
    const events = await Promise.all(reqs.map((r) => client!.changeCD(hostId, r, { timeoutMs: 15_000, signal: shared.signal })));
    expect(events.map((e) => e.vmId)).toEqual(reqs.map((r) => r.vmId));
    expect(events.every((e) => e.type === 'changeCD.completed')).toBe(true);
    // An engine passes one long-lived signal to every call: finished calls must let go.
    expect(getEventListeners(shared.signal, 'abort')).toHaveLength(0);
  });

  it('an aborted call rejects CLOSED at once', async () => {
    await start({ delayMs: 2000 });
    const stop = new AbortController();
    const pending = client!.changeCD(hostId, request(), { timeoutMs: 15_000, signal: stop.signal }).catch((err: unknown) => err);
    stop.abort();
    expect(isCdromClientError(await pending, 'CLOSED')).toBe(true);
  });

  it('rejects with TIMEOUT when no worker answers in time, and NO_ROUTE when no queue is bound', async () => {
    // The host's queue exists but nobody consumes it: the command waits there.
    await ensureTopology(ch, hostId, true);
    const t0 = Date.now();
    const late = await client!.changeCD(hostId, request(), { timeoutMs: 400 }).catch((err: unknown) => err);
    expect(isCdromClientError(late, 'TIMEOUT')).toBe(true);
    expect(Date.now() - t0).toBeLessThan(3000);
    const nowhere = await client!.changeCD(uniqueHost(), request(), { timeoutMs: 5000 }).catch((err: unknown) => err);
    expect(isCdromClientError(nowhere, 'NO_ROUTE')).toBe(true);
  });

  it("carries the caller's trace context (W3C headers) when the engine has a propagator", async () => {
    await ensureTopology(ch, hostId, true);
    // The engine's OpenTelemetry setup, reduced to what the client relies on: a global propagator.
    const traceparent = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    propagation.setGlobalPropagator({
      inject: (_ctx, carrier, setter) => setter.set(carrier, 'traceparent', traceparent),
      extract: (ctx) => ctx,
      fields: () => ['traceparent'],
    });
    try {
      await client!.send(hostId, request());
    } finally {
      propagation.disable();
    }
    const headers: Record<string, unknown>[] = [];
    await waitFor(
      async () => {
        const m = await ch.get(commandsQueue(hostId), { noAck: true });
        if (m !== false) headers.push((m.properties.headers ?? {}));
        return headers.length > 0;
      },
      5_000,
      'the command',
    );
    expect(headers[0]?.['traceparent']).toBe(traceparent);
  });

  it('re-sends the same commandId after losing its connection; the drive still changes once', async () => {
    // Long enough for rabbitmqctl (~1 s a call) to close the client's connection mid-flight.
    await start({ delayMs: 3000 });
    const [pid] = await connectionsNamed(connectionName);
    expect(pid).toBeDefined();
    const req = request();
    const commandId = randomUUID();
    const pending = client!.changeCD(hostId, req, { commandId, timeoutMs: 20_000 });
    await waitFor(() => executor.calls.length > 0, 5000, 'the command started');
    await closeConnections([pid!]);
    const event = await pending;
    expect(event).toMatchObject({ type: 'changeCD.completed', commandId, current: req.media });
    // Two deliveries (the first and the re-send), one drive change, two equivalent events.
    await tap.count(2, 10_000);
    expect(essence(tap.events[1])).toEqual(essence(tap.events[0]));
    expect(essence(event)).toEqual(essence(tap.events[0]));
    expect(effects.count(commandId)).toBe(1);
    expect(await connectionsNamed(connectionName)).toHaveLength(1);
  });
});

describe('cdrom-worker/client events()', () => {
  it('yields only the matching events, in order, and stops on return()', async () => {
    await start({ script: (cmd) => (cmd.drive === 'hdc' ? { kind: 'fail', code: 'DRIVE_NOT_FOUND' } : { kind: 'complete' }) });
    const failures = client!.events({ hostId, outcome: 'failed' });
    const all = client!.events({ hostId });
    await Promise.all([failures.bound, all.bound]);
    expect(failures.bindingKey).toBe(`${hostId}.changeCD.failed`);
    const sent = [request(), { ...request(), drive: 'hdc' }, request(), { ...request(), drive: 'hdc' }];
    for (const r of sent) await client!.send(hostId, r);

    const seenFailures: ResultEvent[] = [];
    for await (const e of failures) {
      seenFailures.push(e);
      if (seenFailures.length === 2) break;
    }
    expect(seenFailures.map((e) => [e.type, e.vmId])).toEqual([
      ['changeCD.failed', sent[1]!.vmId],
      ['changeCD.failed', sent[3]!.vmId],
    ]);
    // `break` called return(): the iterator is finished for good.
    expect(await failures.next()).toEqual({ value: undefined, done: true });

    const seenAll: ResultEvent[] = [];
    for await (const e of all) {
      seenAll.push(e);
      if (seenAll.length === 4) break;
    }
    // One drive per VM: completion order across VMs is not fixed, the set is.
    expect(new Set(seenAll.map((e) => e.vmId))).toEqual(new Set(sent.map((r) => r.vmId)));
  });

  it('filters by vmId and ends without error when its signal aborts', async () => {
    await start();
    const target = request();
    const stop = new AbortController();
    const mine = client!.events({ hostId, vmId: target.vmId.toUpperCase(), signal: stop.signal });
    await mine.bound;
    await client!.send(hostId, request());
    await client!.send(hostId, target);
    const it = mine[Symbol.asyncIterator]();
    const first = await it.next();
    expect(first.done).toBe(false);
    expect((first.value as ResultEvent).vmId).toBe(target.vmId);
    const waiting = it.next();
    stop.abort();
    expect(await waiting).toEqual({ value: undefined, done: true });
  });

  it('ends with CONNECTION_LOST when the broker drops the connection under it', async () => {
    const sub = client!.events({ hostId });
    await sub.bound;
    const [pid] = await connectionsNamed(connectionName);
    const ended = sub.next().catch((err: unknown) => err);
    await closeConnections([pid!]);
    expect(isCdromClientError(await ended, 'CONNECTION_LOST')).toBe(true);
  });
});
