import type { Config } from './config.js';
import { Bus } from './consumers/connection.js';
import { CommandConsumer } from './consumers/commands.consumer.js';
import { createFailpoints, formatFailpoint, type Failpoints } from './infra/failpoints.js';
import { instrumentActivities } from './infra/instrumented-activities.js';
import { startHttpServer, type HealthState, type HttpServer } from './infra/http.js';
import { createLogger, type Logger } from './infra/logging.js';
import { createMetrics, type Metrics } from './infra/metrics.js';
import { createTracing, type Tracing } from './infra/tracing.js';
import { UnackedCommands } from './domain/unacked-commands.js';
import { inPlace, isCommandExecutor, type AttemptExecutor, type CommandExecutor } from './machines/executor.js';

/**
 * The composition root: config → logger → adapters → executor → consumer. The only
 * module that knows every other one.
 */

/** What the factory of the machines gets. */
export interface WorkerDeps {
  readonly config: Config;
  readonly logger: Logger;
  readonly metrics: Metrics;
  readonly failpoints: Failpoints;
  /** commands held unacknowledged, kept by the consumer: their journal records must stay */
  readonly unacked: UnackedCommands;
  /** the command spans, for the step spans (inert when tracing is off) */
  readonly tracing: Tracing;
}

/** What the machines give the bus. */
export interface WorkerParts {
  /** The machines' executor; a one-attempt executor (the bus tests' fakes) is retried in place. */
  readonly executor: CommandExecutor | AttemptExecutor;
  /** Startup recovery of every domain on this host; readiness waits for it. */
  readonly recover?: () => Promise<void>;
  /** Stops background work (the periodic reconciliation) when shutdown begins. */
  readonly quiesce?: () => void;
  /** Releases the adapters (libvirt connection, …) after the bus is closed. */
  readonly close?: () => Promise<void>;
}

export type WorkerFactory = (deps: WorkerDeps) => Promise<WorkerParts>;

/**
 * The real adapters and executor: libvirt (LibvirtHypervisor), storage (`createStorage`)
 * and the per-drive registry (DriveRegistry over `createActivities`). Imported lazily so
 * the CLI tools and the bus tests never load the native libvirt addon.
 */
export const createRealWorkerParts: WorkerFactory = async ({ config, logger, metrics, failpoints, unacked, tracing }) => {
  const [{ LibvirtHypervisor }, { createStorage }, { createActivities }, { DriveRegistry }, { Reconciler }, { VolumeClaims }] = await Promise.all([
    import('./infra/libvirt/libvirt.hypervisor.js'),
    import('./infra/storage/index.js'),
    import('./machines/cdrom.activities.js'),
    import('./machines/drive.registry.js'),
    import('./machines/reconciler.js'),
    import('./domain/volume-claims.js'),
  ]);
  const hypervisor = await LibvirtHypervisor.open({ uri: config.libvirtUri, logger, callTimeoutMs: config.stepTimeoutMs });
  const storage = createStorage({ storageRoot: config.storageRoot, activation: config.lvmActivation, isoDirs: config.isoDirs, logger });
  const claims = new VolumeClaims();
  const registry = new DriveRegistry({
    activities: instrumentActivities(createActivities({ hypervisor, storage, failpoints, claims, unacked }), metrics, { log: logger, storage, tracing }),
    concurrency: config.concurrency,
    stepTimeoutMs: config.stepTimeoutMs,
    retry: config.retry,
    claims,
    log: logger,
    onRetry: ({ vmId, drive, commandId, attempt, error, delayMs }) => {
      metrics.retries.inc();
      if (tracing.enabled) tracing.commands.spanOf(vmId, drive, commandId)?.addEvent('retry', { 'cdrom.attempt': attempt, 'error.type': error.code, 'cdrom.retry_in_ms': delayMs });
    },
    observe: ({ settlement, durationMs }) => {
      if (settlement.kind === 'result') metrics.commandDuration.observe({ action: settlement.result.action, outcome: settlement.result.outcome }, durationMs / 1000);
    },
  });
  // Every CD-ROM of every running domain is reconciled with what libvirt shows now, at
  // start (readiness waits for it), when a domain starts or resumes, and periodically.
  const reconciler = new Reconciler({
    hypervisor,
    storage,
    drives: registry,
    log: logger,
    intervalMs: config.reconcileIntervalMs,
    domainFilter: config.domainFilter,
    claims,
    observe: ({ row }) => metrics.recoveryActions.inc({ row }),
    observeFailure: ({ drive }) => metrics.recoveryFailures.inc({ scope: drive === null ? 'domain' : 'drive' }),
  });
  metrics.countHungCalls(() => hypervisor.hungCalls + registry.hungStorageCalls);
  return {
    executor: registry,
    recover: async () => {
      const report = await reconciler.reconcileAll();
      logger.child({ component: 'recovery' }).info(
        { domains: report.domains, drives: report.drives, actions: report.actions, failed: report.failed.length, orphans: report.orphansTornDown.length },
        'startup reconciliation done',
      );
      reconciler.start();
    },
    quiesce: () => reconciler.stop(),
    close: async () => {
      reconciler.stop();
      await hypervisor.close();
    },
  };
};

/** The longest shutdown waits for the last spans to be exported (an unreachable collector must not hold it). */
const TRACING_FLUSH_MS = 5_000;

export interface WorkerOptions {
  readonly config: Config;
  readonly logger?: Logger;
  readonly createParts?: WorkerFactory;
  /** Exit function of the crash failpoints; tests may replace it. */
  readonly crash?: () => never;
  /** Replaces the tracing made from `config.tracing` (tests: an in-memory exporter). */
  readonly tracing?: Tracing;
}

export interface WorkerHandle {
  readonly httpPort: number | null;
  readonly health: Readonly<HealthState>;
  readonly metrics: Metrics;
  /** Stop consuming, drain, close. Idempotent; resolves when everything is closed. */
  stop(reason?: string): Promise<void>;
}

export async function startWorker(options: WorkerOptions): Promise<WorkerHandle> {
  const { config } = options;
  const logger = (options.logger ?? createLogger({ level: config.logLevel })).child({ hostId: config.hostId });
  const log = logger.child({ component: 'main' });
  const metrics = createMetrics();
  const failpoints = createFailpoints(config.failpoints, options.crash);
  const unacked = new UnackedCommands();
  if (config.failpoints.length > 0) log.warn({ failpoints: config.failpoints.map(formatFailpoint) }, 'failpoints enabled');

  const health: HealthState = { ready: false, live: true };
  let recovered = false;
  let attached = false;
  const updateReady = (): void => {
    health.ready = recovered && attached;
  };

  const tracing = options.tracing ?? (await createTracing({ config: config.tracing, hostId: config.hostId, logger }));
  // a tracing handed in belongs to the caller, who shuts it down
  const closeTracing = (): Promise<void> => (options.tracing === undefined ? tracing.shutdown(TRACING_FLUSH_MS) : Promise.resolve());
  metrics.reportReadiness(() => health.ready && health.live);
  let http: HttpServer | null = null;
  if (config.httpPort !== 0) http = await startHttpServer(config.httpPort, health, metrics.registry, logger);

  let parts: WorkerParts;
  try {
    parts = await (options.createParts ?? createRealWorkerParts)({ config, logger, metrics, failpoints, unacked, tracing });
  } catch (err) {
    await http?.close();
    await closeTracing();
    throw err;
  }

  const bus = new Bus({
    urls: config.amqpUrls,
    tls: config.tls,
    logger,
    connectionName: `cdrom-worker ${config.hostId}`,
    onConnected: (up) => {
      metrics.brokerConnected.set(up ? 1 : 0);
      if (!up) {
        attached = false;
        updateReady();
      }
    },
  });
  // Whether this worker consumes or waits as another worker's standby, once known; a
  // first recovery that fails fails the start.
  let resolveRole!: (r: 'active' | 'standby') => void;
  let rejectRole!: (err: unknown) => void;
  const role = new Promise<'active' | 'standby'>((resolve, reject) => ((resolveRole = resolve), (rejectRole = reject)));
  // Recovery runs when this worker becomes the host's active one: at its first start, and
  // again after it was a standby (the other worker may have died mid-change). A standby
  // recovers nothing: the active worker may be in the middle of those changes.
  let mustRecover = true;
  const activate = async (): Promise<void> => {
    if (!mustRecover) return;
    try {
      if (parts.recover) {
        const t0 = Date.now();
        await parts.recover();
        log.info({ durationMs: Date.now() - t0 }, 'startup recovery finished');
      }
    } catch (err) {
      rejectRole(err);
      throw err;
    }
    mustRecover = false;
    recovered = true;
  };
  const executor = isCommandExecutor(parts.executor) ? parts.executor : inPlace(parts.executor, config.retry, () => metrics.retries.inc());
  const consumer = new CommandConsumer({
    bus,
    hostId: config.hostId,
    prefetch: config.prefetch,
    maxHoldMs: config.maxHoldMs,
    standbyPollMs: config.standbyPollMs,
    declareTopology: config.declareTopology,
    executor,
    retry: config.retry,
    logger,
    failpoints,
    metrics,
    unacked,
    activate,
    onStandby: () => {
      metrics.standby.set(1);
      parts.quiesce?.();
      mustRecover = true;
      recovered = false;
      resolveRole('standby');
    },
    trustedSenders: config.trustedSenders,
    tracing,
    onAttached: () => {
      metrics.standby.set(0);
      resolveRole('active');
      attached = true;
      updateReady();
    },
  });

  let stopping: Promise<void> | null = null;
  const stop = (reason = 'stop'): Promise<void> =>
    (stopping ??= (async () => {
      log.info({ reason, inFlight: consumer.busy }, 'shutting down');
      health.ready = false;
      // One bound for the whole drain: the running attempts, then their events and acks.
      const drainEnd = Date.now() + config.drainTimeoutMs;
      await consumer.stop();
      parts.quiesce?.();
      try {
        await executor.drain(config.drainTimeoutMs);
      } catch (err) {
        log.warn({ err }, 'drain did not finish; unfinished commands will be redelivered');
      }
      if (!(await consumer.idle(Math.max(0, drainEnd - Date.now())))) log.warn({ inFlight: consumer.busy }, 'closing with commands unacknowledged; they will be redelivered');
      await bus.close();
      await parts.close?.().catch((err: unknown) => log.warn({ err }, 'closing adapters failed'));
      // after the drain: the spans of the commands that finished in it go out too
      await closeTracing();
      health.live = false;
      await http?.close();
      log.info('stopped');
    })());

  try {
    // Recovery first (in `activate`, once this worker holds the host): a command must
    // never meet a drive whose last change is half done.
    consumer.attach();
    await bus.start();
    if ((await role) === 'standby') log.info({ httpPort: http?.port ?? null }, 'worker started as the standby of another worker for this host');
  } catch (err) {
    await stop('startup failed');
    throw err;
  }
  updateReady();
  if (health.ready) log.info({ concurrency: config.concurrency, prefetch: config.prefetch, httpPort: http?.port ?? null }, 'worker ready');
  return { httpPort: http?.port ?? null, health, metrics, stop };
}

/**
 * SIGTERM/SIGINT stop the worker gracefully (a second signal exits at once: whatever is
 * unacknowledged is redelivered). Resolves with the exit code once stopped.
 */
export function stopOnSignals(handle: WorkerHandle): Promise<number> {
  return new Promise((resolve) => {
    let signalled = false;
    const onSignal = (signal: NodeJS.Signals): void => {
      if (signalled) process.exit(130);
      signalled = true;
      handle.stop(signal).then(
        () => resolve(0),
        () => resolve(1),
      );
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);
  });
}
