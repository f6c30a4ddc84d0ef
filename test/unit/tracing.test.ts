import { ROOT_CONTEXT, trace } from '@opentelemetry/api';
import { InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config.js';
import { CommandSpans, NO_TRACING, createTracing } from '../../src/infra/tracing.js';

const base = { CDROM_HOST_ID: 'host-1' };

function tracingError(env: Record<string, string>): string {
  try {
    loadConfig({ ...base, ...env });
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error(`expected a ConfigError for ${JSON.stringify(env)}`);
}

describe('tracing configuration (OTEL_*)', () => {
  it('is off without an endpoint, and then no SDK is made', async () => {
    const { tracing } = loadConfig(base);
    expect(tracing).toMatchObject({ endpoint: null, serviceName: 'cdrom-worker', sampler: { root: 'always_on', parentBased: true } });
    expect(await createTracing({ config: tracing, hostId: 'host-1' })).toBe(NO_TRACING);
  });

  it('takes the traces endpoint as given, and appends v1/traces to the generic one', () => {
    expect(loadConfig({ ...base, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' }).tracing.endpoint).toBe('http://collector:4318/v1/traces');
    expect(loadConfig({ ...base, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'https://x.example/custom' }).tracing.endpoint).toBe('https://x.example/custom');
  });

  it('OTEL_SDK_DISABLED and OTEL_TRACES_EXPORTER=none turn it off whatever the endpoint', () => {
    expect(loadConfig({ ...base, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_SDK_DISABLED: 'true' }).tracing.endpoint).toBeNull();
    expect(loadConfig({ ...base, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318', OTEL_TRACES_EXPORTER: 'none' }).tracing.endpoint).toBeNull();
  });

  it('reads service name, headers, resource attributes and the sampler', () => {
    const { tracing } = loadConfig({
      ...base,
      OTEL_EXPORTER_OTLP_ENDPOINT: 'http://c:4318',
      OTEL_SERVICE_NAME: 'cd',
      OTEL_EXPORTER_OTLP_HEADERS: 'a=1,b=x%20y',
      OTEL_EXPORTER_OTLP_TRACES_HEADERS: 'b=2',
      OTEL_RESOURCE_ATTRIBUTES: 'deployment.environment.name=prod',
      OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
      OTEL_TRACES_SAMPLER_ARG: '0.25',
    });
    expect(tracing).toMatchObject({
      serviceName: 'cd',
      headers: { a: '1', b: '2' },
      resourceAttributes: { 'deployment.environment.name': 'prod' },
      sampler: { root: 'traceidratio', parentBased: true, ratio: 0.25 },
    });
  });

  it('refuses what would silently export nothing', () => {
    expect(tracingError({ OTEL_EXPORTER_OTLP_ENDPOINT: 'grpc://c:4317' })).toMatch(/^OTEL_EXPORTER_OTLP_ENDPOINT: must be an http/);
    expect(tracingError({ OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'grpc' })).toMatch(/^OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: /);
    expect(tracingError({ OTEL_TRACES_SAMPLER: 'sometimes' })).toMatch(/^OTEL_TRACES_SAMPLER: /);
    expect(tracingError({ OTEL_TRACES_SAMPLER: 'traceidratio', OTEL_TRACES_SAMPLER_ARG: '2' })).toMatch(/^OTEL_TRACES_SAMPLER_ARG: /);
    expect(tracingError({ OTEL_EXPORTER_OTLP_HEADERS: 'novalue' })).toMatch(/^OTEL_EXPORTER_OTLP_HEADERS: entry 1/);
  });
});

describe('CommandSpans: which command span a drive’s step belongs to', () => {
  const tracer = trace.getTracer('test');
  // non-recording spans are enough: only their identity matters here
  const span = () => tracer.startSpan('x', {}, ROOT_CONTEXT);
  const VM = 'A2B6F4F0-0C7E-4F0E-8D52-1D0D7A3F5E90';

  // The drive's last inspect, as the instrumented activities remember it.
  let inspected: string | null = null;
  const stepSpan = (spans: CommandSpans, vmId = VM, drive = 'sdc') => spans.spanOf(vmId, drive, inspected);

  it('a step belongs to the command the drive last inspected, while its span is open', () => {
    const spans = new CommandSpans();
    const a = span();
    inspected = null;
    spans.begin(VM, 'sdc', 'c-1', a);
    expect(stepSpan(spans)).toBeUndefined(); // queued: not running yet
    inspected = 'C-1';
    expect(stepSpan(spans, VM.toLowerCase())).toBe(a);
    expect(stepSpan(spans, VM, 'sdd')).toBeUndefined();
    spans.end(VM, 'sdc', 'c-1', a);
    // a later background reconciliation of the drive gets no parent
    expect(stepSpan(spans)).toBeUndefined();
    expect(spans.size).toBe(0);
  });

  it('a command queued behind another on the same drive does not take its steps', () => {
    const spans = new CommandSpans();
    const a = span();
    const b = span();
    spans.begin(VM, 'sdc', 'c-1', a);
    inspected = 'c-1';
    spans.begin(VM, 'sdc', 'c-2', b);
    expect(stepSpan(spans)).toBe(a);
    spans.end(VM, 'sdc', 'c-1', a);
    inspected = 'c-2';
    expect(stepSpan(spans)).toBe(b);
    spans.end(VM, 'sdc', 'c-2', b);
    expect(spans.size).toBe(0);
  });

  it('a redelivery that joins its command takes over the steps once the old delivery ends', () => {
    const spans = new CommandSpans();
    const first = span();
    const again = span();
    spans.begin(VM, 'sdc', 'c-1', first);
    inspected = 'c-1';
    spans.begin(VM, 'sdc', 'c-1', again);
    expect(stepSpan(spans)).toBe(first);
    spans.end(VM, 'sdc', 'c-1', first);
    expect(stepSpan(spans)).toBe(again);
    spans.end(VM, 'sdc', 'c-1', again);
    expect(spans.size).toBe(0);
  });

  it('an attempt without a command (null) has no span', () => {
    const spans = new CommandSpans();
    const a = span();
    spans.begin(VM, 'sdc', 'c-1', a);
    // the drive's last inspect named no command (a recovery of its own)
    inspected = null;
    expect(stepSpan(spans)).toBeUndefined();
    spans.end(VM, 'sdc', 'c-1', a);
    expect(spans.size).toBe(0);
  });
});

describe('propagation', () => {
  it('reads traceparent from AMQP headers (string or bytes) and writes it back', async () => {
    const exporter = new InMemorySpanExporter();
    const tracing = await createTracing({ config: loadConfig(base).tracing, hostId: 'host-1', processors: [new SimpleSpanProcessor(exporter)] });
    const tp = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
    for (const value of [tp, Buffer.from(tp, 'latin1')]) {
      const ctx = tracing.extract({ traceparent: value, other: 42 });
      expect(trace.getSpanContext(ctx)).toMatchObject({ traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', isRemote: true });
      const s = tracing.tracer.startSpan('child', {}, ctx);
      expect(tracing.inject(s)).toEqual({ traceparent: `00-0af7651916cd43dd8448eb211c80319c-${s.spanContext().spanId}-01` });
      s.end();
    }
    expect(trace.getSpanContext(tracing.extract({ traceparent: 'garbage' }))).toBeUndefined();
    expect(trace.getSpanContext(tracing.extract(undefined))).toBeUndefined();
    await tracing.shutdown(1000);
  });
});
