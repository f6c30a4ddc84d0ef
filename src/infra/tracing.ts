import { ROOT_CONTEXT, SpanStatusCode, trace, type Context, type Span, type TextMapGetter, type TextMapSetter, type Tracer } from '@opentelemetry/api';
import { W3CTraceContextPropagator } from '@opentelemetry/core';
import type { SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { TracingConfig } from '../config.js';
import { commandKey } from '../domain/media.js';
import type { Logger } from './logging.js';

/**
 * OpenTelemetry tracing (README, Tracing): one CONSUMER span per command, from delivery
 * to ack, and one child span per step. Off unless an OTLP endpoint is configured: then
 * no SDK is loaded and callers skip every tracing call on `enabled`, so an untraced
 * worker pays one boolean test per command and step.
 *
 * The steps run inside XState actors, on promise chains the consumer did not start, so
 * the active context does not reach them (and this process installs no context
 * manager). The command's span is handed over explicitly instead, by `CommandSpans`.
 */

export interface Tracing {
  /** false: no SDK; every other member is inert */
  readonly enabled: boolean;
  readonly tracer: Tracer;
  readonly commands: CommandSpans;
  /** The W3C trace context of AMQP headers (the engine's trace), or the root context. */
  extract(headers: Readonly<Record<string, unknown>> | undefined): Context;
  /** `traceparent` (and `tracestate`) of `span`, for an outgoing message's headers. */
  inject(span: Span): Record<string, string>;
  /** Exports what is buffered and stops; bounded by `timeoutMs`. */
  shutdown(timeoutMs: number): Promise<void>;
}

const propagator = new W3CTraceContextPropagator();

const headerGetter: TextMapGetter<Readonly<Record<string, unknown>>> = {
  keys: (carrier) => Object.keys(carrier),
  // AMQP header values may be anything (numbers, buffers, tables): only strings carry a context
  get: (carrier, key) => {
    const v = carrier[key];
    return typeof v === 'string' ? v : Buffer.isBuffer(v) ? v.toString('latin1') : undefined;
  },
};

const headerSetter: TextMapSetter<Record<string, string>> = {
  set: (carrier, key, value) => {
    carrier[key] = value;
  },
};

/**
 * The command spans open now, so that a step finds the span of the command it belongs
 * to. What a step receives is its drive (`DriveRef`), and a drive runs one request at a
 * time; the drive's first step of every command attempt is `inspect`, which names the
 * command. So: the consumer registers a span per (drive, commandId) for as long as it
 * holds the delivery; the instrumented activities remember which command the drive's
 * last `inspect` named (they do for their logs anyway) and ask for that command's span;
 * every step of that drive until the next `inspect` belongs to it — including the reconciliation
 * a retry runs before its next attempt, since a command waiting for its retry keeps
 * its drive. When the command's span ends it is no longer found, so a background
 * reconciliation that comes later finds no command and gets no span (it runs every
 * minute on every drive; one trace per drive per minute would drown the commands').
 *
 * A (drive, commandId) may have several spans at once: a redelivery that joins its
 * execution in progress, or the same commandId sent twice. They run in delivery order,
 * so the oldest open one is the one running.
 */
export class CommandSpans {
  private readonly open = new Map<string, Span[]>();

  begin(vmId: string, drive: string, commandId: string, span: Span): void {
    const key = commandKey(vmId, drive, commandId);
    const spans = this.open.get(key);
    if (spans === undefined) this.open.set(key, [span]);
    else spans.push(span);
  }

  end(vmId: string, drive: string, commandId: string, span: Span): void {
    const key = commandKey(vmId, drive, commandId);
    const spans = this.open.get(key);
    if (spans === undefined) return;
    const i = spans.indexOf(span);
    if (i >= 0) spans.splice(i, 1);
    if (spans.length > 0) return;
    this.open.delete(key);
  }

  /** The open span of `commandId` on the drive (the oldest, the one running); none for no command. */
  spanOf(vmId: string, drive: string, commandId: string | null | undefined): Span | undefined {
    return commandId == null ? undefined : this.open.get(commandKey(vmId, drive, commandId))?.[0];
  }

  /** Open (drive, commandId) entries, for tests: nothing may be left behind. */
  get size(): number {
    return this.open.size;
  }
}

/** What a failed step or command puts on its span: the exception, ERROR, and its stable code. */
export function recordFailure(span: Span, err: unknown): void {
  const code = errorCode(err);
  if (err instanceof Error) span.recordException(err);
  span.setAttribute('error.type', code);
  span.setStatus({ code: SpanStatusCode.ERROR, message: code });
}

function errorCode(err: unknown): string {
  if (typeof err === 'object' && err !== null) {
    const code = (err as { readonly code?: unknown }).code;
    if (typeof code === 'string') return code;
  }
  return err instanceof Error ? err.name : 'INTERNAL';
}

class SdkTracing implements Tracing {
  readonly enabled = true;
  readonly commands = new CommandSpans();

  constructor(
    readonly tracer: Tracer,
    private readonly provider: { shutdown(): Promise<void> },
    private readonly log: Logger | undefined,
  ) {}

  extract(headers: Readonly<Record<string, unknown>> | undefined): Context {
    return headers === undefined ? ROOT_CONTEXT : propagator.extract(ROOT_CONTEXT, headers, headerGetter);
  }

  inject(span: Span): Record<string, string> {
    const out: Record<string, string> = {};
    propagator.inject(trace.setSpan(ROOT_CONTEXT, span), out, headerSetter);
    return out;
  }

  async shutdown(timeoutMs: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<'expired'>((resolve) => (timer = setTimeout(() => resolve('expired'), timeoutMs)));
    try {
      // An unreachable collector must not hold the worker's exit: what is not out by then is dropped.
      const r = await Promise.race([this.provider.shutdown().then(() => 'done' as const), expired]);
      if (r === 'expired') this.log?.warn({ timeoutMs }, 'tracing: spans not exported before shutdown; dropped');
    } catch (err) {
      this.log?.warn({ err }, 'tracing: shutdown failed');
    } finally {
      clearTimeout(timer);
    }
  }
}

class NoTracing implements Tracing {
  readonly enabled = false;
  readonly tracer = trace.getTracer('cdrom-worker');
  readonly commands = new CommandSpans();
  extract(): Context {
    return ROOT_CONTEXT;
  }
  inject(): Record<string, string> {
    return {};
  }
  shutdown(): Promise<void> {
    return Promise.resolve();
  }
}

export const NO_TRACING: Tracing = new NoTracing();

export interface TracingOptions {
  readonly config: TracingConfig;
  /** this worker's host id: the resource's service.instance.id */
  readonly hostId: string;
  readonly logger?: Logger;
  /**
   * Where spans go instead of the OTLP exporter (tests: an in-memory exporter behind a
   * SimpleSpanProcessor; the benchmark: a sink). Given, tracing is on whatever the endpoint.
   */
  readonly processors?: readonly SpanProcessor[];
}

/**
 * The SDK with a batching OTLP/HTTP exporter when an endpoint is configured, else
 * NO_TRACING. The SDK is imported here, lazily, so an untraced worker never loads it.
 * The provider is not registered globally: the worker hands its tracer around, and a
 * library in the same process keeps whatever global provider it was given.
 */
export async function createTracing(options: TracingOptions): Promise<Tracing> {
  const { config } = options;
  if (options.processors === undefined && config.endpoint === null) return NO_TRACING;
  const [sdk, { resourceFromAttributes }, semconv] = await Promise.all([
    import('@opentelemetry/sdk-trace-base'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/semantic-conventions'),
  ]);
  let processors = options.processors;
  if (processors === undefined) {
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
    const exporter = new OTLPTraceExporter({ url: config.endpoint ?? undefined, headers: { ...config.headers } });
    processors = [new sdk.BatchSpanProcessor(exporter)];
  }
  const { root, parentBased, ratio } = config.sampler;
  const rootSampler = root === 'always_on' ? new sdk.AlwaysOnSampler() : root === 'always_off' ? new sdk.AlwaysOffSampler() : new sdk.TraceIdRatioBasedSampler(ratio);
  const provider = new sdk.BasicTracerProvider({
    resource: resourceFromAttributes({
      ...config.resourceAttributes,
      [semconv.ATTR_SERVICE_NAME]: config.serviceName,
      [semconv.ATTR_SERVICE_INSTANCE_ID]: options.hostId,
    }),
    sampler: parentBased ? new sdk.ParentBasedSampler({ root: rootSampler }) : rootSampler,
    spanProcessors: [...processors],
  });
  options.logger?.child({ component: 'tracing' }).info({ endpoint: options.processors === undefined ? redacted(config.endpoint) : 'custom', serviceName: config.serviceName }, 'tracing on');
  return new SdkTracing(provider.getTracer('cdrom-worker'), provider, options.logger?.child({ component: 'tracing' }));
}

/** The endpoint without user info: a URL in the environment may hold a password. */
function redacted(endpoint: string | null): string | null {
  if (endpoint === null) return null;
  const url = new URL(endpoint);
  url.username = '';
  url.password = '';
  return url.toString();
}
