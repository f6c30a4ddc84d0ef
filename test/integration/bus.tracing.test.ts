import { randomUUID } from 'node:crypto';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig, type Config } from '../../src/config.js';
import { commandsQueue, deadQueue } from '../../src/consumers/topology.js';
import { CdromError } from '../../src/domain/errors.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createTracing, type Tracing } from '../../src/infra/tracing.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { AMQP_URL, EventTap, command, deleteHostQueues, drainQueue, messageCount, openTestConnection, publish, uniqueHost, waitFor } from '../support/amqp.js';
import { TracedHost, spanTree } from '../support/traced-host.js';
import { ISO_A } from '../support/world.js';

/**
 * Tracing through the real consumer and the real registry and activities (over the
 * fakes): the span tree of a command, its parent from the sender's traceparent, the
 * context on the result event, and failures on the spans where they happened.
 */

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;
let worker: WorkerHandle | null;
let exporter: InMemorySpanExporter;
let tracing: Tracing;
let host: TracedHost;

// The engine's trace: the command's span must be its child.
const ENGINE_TRACE = '0af7651916cd43dd8448eb211c80319c';
const ENGINE_SPAN = 'b7ad6b7169203331';

function config(extra: Record<string, string> = {}): Config {
  return loadConfig({ CDROM_HOST_ID: hostId, CDROM_AMQP_URL: AMQP_URL, CDROM_HTTP_PORT: '0', CDROM_DRAIN_TIMEOUT_MS: '2000', ...extra });
}

async function start(): Promise<void> {
  worker = await startWorker({ config: config(), logger: silentLogger(), tracing, createParts: host.parts });
}

const traceparentOf = (headers: unknown): string | undefined => {
  const v = (headers as Record<string, unknown> | undefined)?.['traceparent'];
  return typeof v === 'string' ? v : undefined;
};

beforeEach(async () => {
  hostId = uniqueHost();
  worker = null;
  host = new TracedHost();
  exporter = new InMemorySpanExporter();
  tracing = await createTracing({ config: config().tracing, hostId, processors: [new SimpleSpanProcessor(exporter)] });
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
});

afterEach(async () => {
  await worker?.stop('test end');
  await tracing.shutdown(1000);
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

describe('tracing', () => {
  it('a command: a CONSUMER span under the sender’s trace, one child per step, traceparent on the event', async () => {
    await start();
    const cmd = command({ vmId: host.vmId, media: ISO_A });
    const commandId = cmd['commandId'] as string;
    await publish(ch, hostId, cmd, { messageId: 'msg-1', correlationId: 'corr-1', headers: { traceparent: `00-${ENGINE_TRACE}-${ENGINE_SPAN}-01`, tracestate: 'engine=1' } });
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.completed', commandId });
    // the span ends after the ack, a moment after the event
    await waitFor(() => exporter.getFinishedSpans().some((s) => s.attributes['cdrom.command_id'] === commandId), 5000, 'command span');

    const { root, children } = spanTree(exporter.getFinishedSpans(), commandId);
    expect(root.kind).toBe(SpanKind.CONSUMER);
    expect(root.name).toBe('process cdrom.commands');
    expect(root.spanContext().traceId).toBe(ENGINE_TRACE);
    expect(root.parentSpanContext?.spanId).toBe(ENGINE_SPAN);
    expect(root.attributes).toMatchObject({
      'messaging.system': 'rabbitmq',
      'messaging.operation.type': 'process',
      'messaging.operation': 'process',
      'messaging.destination.name': 'cdrom.commands',
      'messaging.destination.subscription.name': commandsQueue(hostId),
      'messaging.rabbitmq.destination.routing_key': hostId,
      'messaging.message.id': 'msg-1',
      'messaging.message.conversation_id': 'corr-1',
      'cdrom.command_id': commandId,
      'cdrom.vm_id': host.vmId,
      'cdrom.drive': 'sdc',
      'cdrom.outcome': 'completed',
      'cdrom.action': 'load',
    });
    expect(root.status.code).toBe(SpanStatusCode.UNSET);
    expect(root.resource.attributes['service.name']).toBe('cdrom-worker');

    // every step of the load, in order, each a child of the command's span
    const names = children.map((s) => s.name);
    expect(names[0]).toBe('cdrom.step inspect');
    for (const step of ['writeJournal', 'editMetadata', 'prepareVolume', 'updateDevice']) expect(names).toContain(`cdrom.step ${step}`);
    expect(names.indexOf('cdrom.step prepareVolume')).toBeLessThan(names.indexOf('cdrom.step updateDevice'));
    for (const s of children) {
      expect(s.spanContext().traceId).toBe(ENGINE_TRACE);
      expect(s.attributes).toMatchObject({ 'cdrom.vm_id': host.vmId, 'cdrom.drive': 'sdc' });
      expect(s.status.code).toBe(SpanStatusCode.UNSET);
    }
    // no step span outside the tree: nothing got lost to a wrong parent
    expect(exporter.getFinishedSpans()).toHaveLength(children.length + 1);

    // the result event continues the trace under the command's span
    const props = tap.properties[0]!;
    expect(traceparentOf(props.headers)).toBe(`00-${ENGINE_TRACE}-${root.spanContext().spanId}-01`);
    expect((props.headers as Record<string, unknown>)['tracestate']).toBe('engine=1');
    // and the drive registry keeps nothing once the command is done
    expect(tracing.commands.size).toBe(0);
  });

  it('a failing step: its span has the exception and ERROR, and so does the command’s', async () => {
    await start();
    host.storage.failNext('prepare', new CdromError('VOLUME_NOT_FOUND', 'no such LV (test)'));
    const cmd = command({ vmId: host.vmId, media: ISO_A });
    const commandId = cmd['commandId'] as string;
    await publish(ch, hostId, cmd);
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.failed', error: { code: 'VOLUME_NOT_FOUND' } });
    await waitFor(() => exporter.getFinishedSpans().some((s) => s.attributes['cdrom.command_id'] === commandId), 5000, 'command span');

    const { root, children } = spanTree(exporter.getFinishedSpans(), commandId);
    // no traceparent on the command: the worker starts the trace
    expect(root.parentSpanContext).toBeUndefined();
    expect(root.status).toMatchObject({ code: SpanStatusCode.ERROR, message: 'VOLUME_NOT_FOUND' });
    expect(root.attributes).toMatchObject({ 'cdrom.outcome': 'failed', 'error.type': 'VOLUME_NOT_FOUND' });
    const prepare = children.filter((s) => s.name === 'cdrom.step prepareVolume');
    expect(prepare).toHaveLength(1);
    expect(prepare[0]!.status).toMatchObject({ code: SpanStatusCode.ERROR, message: 'VOLUME_NOT_FOUND' });
    expect(prepare[0]!.attributes['error.type']).toBe('VOLUME_NOT_FOUND');
    const exception = prepare[0]!.events.find((e) => e.name === 'exception');
    expect(exception?.attributes?.['exception.message']).toBe('no such LV (test)');
    // the steps that did not fail are not marked
    expect(children.filter((s) => s.status.code === SpanStatusCode.ERROR)).toHaveLength(1);
    expect(traceparentOf(tap.properties[0]!.headers)).toContain(root.spanContext().traceId);
  });

  it('a retried command stays one span: both attempts are its children', async () => {
    await start();
    host.storage.failNext('prepare', new CdromError('PREPARE_FAILED', 'lvchange timed out (test)', { retryable: true }));
    const cmd = command({ vmId: host.vmId, media: ISO_A });
    const commandId = cmd['commandId'] as string;
    await publish(ch, hostId, cmd);
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.completed' });
    await waitFor(() => exporter.getFinishedSpans().some((s) => s.attributes['cdrom.command_id'] === commandId), 5000, 'command span');

    const spans = exporter.getFinishedSpans();
    expect(spans.filter((s) => s.kind === SpanKind.CONSUMER)).toHaveLength(1);
    const { root, children } = spanTree(spans, commandId);
    const names = children.map((s) => s.name);
    expect(names.filter((n) => n === 'cdrom.step inspect').length).toBeGreaterThanOrEqual(2);
    // the reconciliation before the retry is part of the command too
    expect(names).toContain('cdrom.step recover');
    expect(children.filter((s) => s.name === 'cdrom.step prepareVolume').map((s) => s.status.code)).toEqual([SpanStatusCode.ERROR, SpanStatusCode.UNSET]);
    expect(root.status.code).toBe(SpanStatusCode.UNSET);
    expect(spans).toHaveLength(children.length + 1);
  });

  it('a rejected command: ERROR with its code, no steps, and the dead letter keeps the sender’s traceparent', async () => {
    await start();
    const traceparent = `00-${randomUUID().replace(/-/g, '')}-${ENGINE_SPAN}-01`;
    await publish(ch, hostId, JSON.stringify({ type: 'changeCD', version: 1, commandId: 'not-a-uuid' }), { headers: { traceparent } });
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.rejected', error: { code: 'INVALID_COMMAND' } });
    await waitFor(() => exporter.getFinishedSpans().length === 1, 5000, 'consumer span');
    const [span] = exporter.getFinishedSpans();
    expect(span!.status).toMatchObject({ code: SpanStatusCode.ERROR, message: 'INVALID_COMMAND' });
    expect(span!.attributes).toMatchObject({ 'cdrom.outcome': 'rejected', 'cdrom.dead_lettered': true, 'error.type': 'INVALID_COMMAND' });
    expect(span!.parentSpanContext?.spanId).toBe(ENGINE_SPAN);
    await waitFor(async () => (await messageCount(model, deadQueue(hostId))) === 1, 5000, 'dead letter');
    const [dead] = await drainQueue(model, deadQueue(hostId));
    expect(traceparentOf(dead!.properties.headers)).toBe(traceparent);
  });

  it('off (no endpoint): no traceparent on the event, and the command runs the same', async () => {
    worker = await startWorker({ config: config(), logger: silentLogger(), createParts: host.parts });
    const cmd = command({ vmId: host.vmId, media: ISO_A });
    await publish(ch, hostId, cmd, { headers: { traceparent: `00-${ENGINE_TRACE}-${ENGINE_SPAN}-01` } });
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.completed' });
    expect(traceparentOf(tap.properties[0]!.headers)).toBeUndefined();
    expect(exporter.getFinishedSpans()).toHaveLength(0);
  });
});
