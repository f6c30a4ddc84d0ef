import { randomBytes, randomUUID } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import { connect, type ConfirmChannel } from 'amqplib';
import { pino } from 'pino';
import { loadConfig } from '../../src/config.js';
import type { ResultEvent } from '../../src/contracts/schemas.js';
import { COMMANDS_EXCHANGE, EVENTS_EXCHANGE, removeHostQueues } from '../../src/consumers/topology.js';
import type { Media } from '../../src/domain/media.js';
import type { StoragePort } from '../../src/domain/ports.js';
import { instrumentActivities } from '../../src/infra/instrumented-activities.js';
import { LibvirtHypervisor } from '../../src/infra/libvirt/libvirt.hypervisor.js';
import { createLogger, type Logger } from '../../src/infra/logging.js';
import { createStorage } from '../../src/infra/storage/index.js';
import { createActivities, type Activities } from '../../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../../src/machines/drive.registry.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { withTimeout, type Cleanup } from './common.js';
import { LIBVIRT_URI, type BenchStorage } from './real-env.js';

/**
 * The real worker in this process: `startWorker` with the same parts as
 * `createRealWorkerParts` (LibvirtHypervisor, loop-activated `createStorage`,
 * instrumented activities, DriveRegistry) except that storage only scans the bench's PV
 * (an LVM filter; the production config has none) and no startup reconciliation runs
 * (it would reach every domain on this shared host). Its activities are wrapped with a
 * stopwatch so a change can be broken down by step. Logs go at info level, serialised as
 * in production, to /dev/null.
 */

export const AMQP_URL = process.env['CDROM_AMQP_URL'] ?? 'amqp://guest:guest@127.0.0.1:5672';

export type StepName = keyof Activities;

/** Time spent in each activity since the last `take()`, summed. */
export class StepClock {
  private acc = new Map<StepName, number>();

  wrap(a: Activities): Activities {
    const out = { ...a };
    for (const name of Object.keys(a) as StepName[]) {
      (out as Record<StepName, unknown>)[name] = async (input: never): Promise<unknown> => {
        const t0 = performance.now();
        try {
          return await (a[name] as (input: never) => Promise<unknown>)(input);
        } finally {
          this.acc.set(name, (this.acc.get(name) ?? 0) + performance.now() - t0);
        }
      };
    }
    return out;
  }

  take(): Map<StepName, number> {
    const a = this.acc;
    this.acc = new Map();
    return a;
  }
}

export interface RealWorker {
  readonly hostId: string;
  readonly hypervisor: LibvirtHypervisor;
  readonly storage: StoragePort;
  readonly steps: StepClock;
  readonly worker: WorkerHandle;
  /** Publishes a changeCD and resolves with its result event and the latency in ms. */
  change(vmId: string, media: Media | null, timeoutMs?: number): Promise<{ event: ResultEvent; ms: number }>;
}

export async function startRealWorker(
  st: BenchStorage,
  cleanup: Cleanup,
  opts: { concurrency?: number; logger?: Logger; stepTimeoutMs?: number; retry?: { limit: number; baseMs: number; maxMs: number }; otlpEndpoint?: string } = {},
): Promise<RealWorker> {
  const hostId = `bench-${process.pid}-${randomBytes(3).toString('hex')}`;
  const hypervisor = await LibvirtHypervisor.open({ uri: LIBVIRT_URI });
  cleanup.add('libvirt connection of the worker', () => hypervisor.close());
  const storage = createStorage({ storageRoot: st.root, activation: 'loop', lvmFilter: st.domain.lvmFilter, logger: pino({ level: 'silent' }) });
  const steps = new StepClock();
  const logger = opts.logger ?? createLogger({ level: 'info', destination: pino.destination({ dest: '/dev/null', sync: true }) as unknown as NodeJS.WritableStream });
  const config = loadConfig({
    CDROM_HOST_ID: hostId,
    CDROM_AMQP_URL: AMQP_URL,
    CDROM_HTTP_PORT: '0',
    CDROM_LIBVIRT_URI: LIBVIRT_URI,
    CDROM_STORAGE_ROOT: st.root,
    CDROM_LVM_ACTIVATION: 'loop',
    CDROM_CONCURRENCY: String(opts.concurrency ?? 16),
    CDROM_STEP_TIMEOUT_MS: String(opts.stepTimeoutMs ?? 30_000),
    ...(opts.retry === undefined ? {} : { CDROM_RETRY_LIMIT: String(opts.retry.limit), CDROM_RETRY_BASE_MS: String(opts.retry.baseMs), CDROM_RETRY_MAX_MS: String(opts.retry.maxMs) }),
    CDROM_RECONCILE_INTERVAL_MS: '0',
    // tracing on exactly as in production: the OTEL_* variables, the OTLP/HTTP exporter
    ...(opts.otlpEndpoint === undefined ? {} : { OTEL_EXPORTER_OTLP_ENDPOINT: opts.otlpEndpoint }),
  });

  const admin = await connect(AMQP_URL, { noDelay: true });
  admin.on('error', () => undefined);
  cleanup.add(`queues of ${hostId}`, async () => {
    await deleteQueues(admin, hostId);
    await admin.close().catch(() => undefined);
  });

  const worker = await startWorker({
    config,
    logger,
    createParts: ({ metrics, failpoints, logger: log, tracing }) => {
      const registry = new DriveRegistry({
        activities: steps.wrap(instrumentActivities(createActivities({ hypervisor, storage, failpoints }), metrics, { log, storage, tracing })),
        concurrency: config.concurrency,
        stepTimeoutMs: config.stepTimeoutMs,
        log,
        observe: ({ settlement, durationMs }) => {
          if (settlement.kind === 'result') metrics.commandDuration.observe({ action: settlement.result.action, outcome: settlement.result.outcome }, durationMs / 1000);
        },
      });
      return Promise.resolve({ executor: registry });
    },
  });
  cleanup.add('worker', () => worker.stop('bench done'));

  const waiting = new Map<string, (e: ResultEvent) => void>();
  const ch = await admin.createConfirmChannel();
  const tap = await admin.createChannel();
  const { queue } = await tap.assertQueue('', { exclusive: true, autoDelete: true });
  await tap.bindQueue(queue, EVENTS_EXCHANGE, `${hostId}.changeCD.*`);
  await tap.consume(
    queue,
    (msg) => {
      if (msg === null) return;
      const e = JSON.parse(msg.content.toString('utf8')) as ResultEvent;
      if (e.commandId !== null) waiting.get(e.commandId)?.(e);
    },
    { noAck: true },
  );

  return {
    hostId,
    hypervisor,
    storage,
    steps,
    worker,
    change: (vmId, media, timeoutMs = 60_000) => publishAndWait(ch, hostId, waiting, vmId, media, timeoutMs),
  };
}

async function publishAndWait(
  ch: ConfirmChannel,
  hostId: string,
  waiting: Map<string, (e: ResultEvent) => void>,
  vmId: string,
  media: Media | null,
  timeoutMs: number,
): Promise<{ event: ResultEvent; ms: number }> {
  const commandId = randomUUID();
  const body = Buffer.from(JSON.stringify({ type: 'changeCD', version: 1, commandId, vmId, drive: 'sdc', media }));
  const got = new Promise<ResultEvent>((resolve) => waiting.set(commandId, resolve));
  const t0 = performance.now();
  ch.publish(COMMANDS_EXCHANGE, hostId, body, { persistent: true, contentType: 'application/json' });
  try {
    const event = await withTimeout(got, timeoutMs, `event of command ${commandId} for VM ${vmId}`);
    const ms = performance.now() - t0;
    if (event.type !== 'changeCD.completed') throw new Error(`command ${commandId} ${event.type}: ${JSON.stringify(event.error)}`);
    return { event, ms };
  } finally {
    waiting.delete(commandId);
  }
}

export const deleteQueues = removeHostQueues;
