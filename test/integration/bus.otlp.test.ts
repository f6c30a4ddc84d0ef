import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { silentLogger } from '../../src/infra/logging.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { AMQP_URL, EventTap, command, deleteHostQueues, openTestConnection, publish, uniqueHost } from '../support/amqp.js';
import { TracedHost } from '../support/traced-host.js';
import { ISO_A } from '../support/world.js';

/**
 * End to end through the exporter: the worker, configured by the OTEL_* variables alone,
 * exports its spans over OTLP/HTTP to a receiver this test runs, and one command's spans
 * come back with their names, the commandId and the parent links.
 */

interface OtlpValue {
  readonly stringValue?: string;
  readonly intValue?: string | number;
  readonly boolValue?: boolean;
}
interface OtlpSpan {
  readonly traceId: string;
  readonly spanId: string;
  readonly parentSpanId?: string;
  readonly name: string;
  readonly kind: number;
  readonly attributes: ReadonlyArray<{ readonly key: string; readonly value: OtlpValue }>;
}
interface OtlpRequest {
  readonly resourceSpans: ReadonlyArray<{
    readonly resource: { readonly attributes: ReadonlyArray<{ readonly key: string; readonly value: OtlpValue }> };
    readonly scopeSpans: ReadonlyArray<{ readonly spans: readonly OtlpSpan[] }>;
  }>;
}

/** A minimal OTLP/HTTP traces receiver: keeps every JSON request posted to /v1/traces. */
class Receiver {
  readonly requests: OtlpRequest[] = [];
  readonly contentTypes: string[] = [];
  private constructor(private readonly server: Server) {}

  static async start(): Promise<Receiver> {
    const server = createServer();
    const r = new Receiver(server);
    server.on('request', (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (req.method !== 'POST' || req.url !== '/v1/traces') {
          res.writeHead(404).end();
          return;
        }
        r.contentTypes.push(req.headers['content-type'] ?? '');
        r.requests.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as OtlpRequest);
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return r;
  }

  get url(): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  spans(): OtlpSpan[] {
    return this.requests.flatMap((q) => q.resourceSpans.flatMap((rs) => rs.scopeSpans.flatMap((ss) => ss.spans)));
  }

  serviceNames(): string[] {
    return this.requests.flatMap((q) => q.resourceSpans.map((rs) => rs.resource.attributes.find((a) => a.key === 'service.name')?.value.stringValue ?? ''));
  }

  close(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

const attr = (s: OtlpSpan, key: string): OtlpValue | undefined => s.attributes.find((a) => a.key === key)?.value;

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;
let worker: WorkerHandle | null;
let receiver: Receiver;

beforeEach(async () => {
  hostId = uniqueHost();
  worker = null;
  receiver = await Receiver.start();
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
});

afterEach(async () => {
  await worker?.stop('test end');
  await receiver.close();
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

describe('OTLP/HTTP export', () => {
  it('a command’s spans reach the collector named by OTEL_EXPORTER_OTLP_ENDPOINT, flushed at shutdown', async () => {
    const host = new TracedHost();
    const config = loadConfig({
      CDROM_HOST_ID: hostId,
      CDROM_AMQP_URL: AMQP_URL,
      CDROM_HTTP_PORT: '0',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_SERVICE_NAME: 'cdrom-worker-test',
    });
    worker = await startWorker({ config, logger: silentLogger(), createParts: host.parts });
    const cmd = command({ vmId: host.vmId, media: ISO_A });
    const commandId = cmd['commandId'] as string;
    const engineTrace = '4bf92f3577b34da6a3ce929d0e0e4736';
    await publish(ch, hostId, cmd, { headers: { traceparent: `00-${engineTrace}-00f067aa0ba902b7-01` } });
    await tap.count(1);
    // the batch processor exports on its schedule; shutdown must flush what it holds
    await worker.stop('test');
    worker = null;

    expect(receiver.contentTypes[0]).toMatch(/^application\/json/);
    expect(receiver.serviceNames()).toContain('cdrom-worker-test');
    const spans = receiver.spans();
    const root = spans.find((s) => attr(s, 'cdrom.command_id')?.stringValue === commandId);
    expect(root).toBeDefined();
    expect(root!.name).toBe('process cdrom.commands');
    expect(root!.traceId).toBe(engineTrace);
    expect(root!.parentSpanId).toBe('00f067aa0ba902b7');
    expect(attr(root!, 'messaging.system')?.stringValue).toBe('rabbitmq');
    const children = spans.filter((s) => s.parentSpanId === root!.spanId);
    expect(children.map((s) => s.name)).toEqual(expect.arrayContaining(['cdrom.step inspect', 'cdrom.step writeJournal', 'cdrom.step editMetadata', 'cdrom.step prepareVolume', 'cdrom.step updateDevice']));
    for (const s of children) expect(s.traceId).toBe(engineTrace);
  });
});
