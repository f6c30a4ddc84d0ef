import type { Config } from './config.js';
import { Bus } from './consumers/connection.js';
import { CommandConsumer } from './consumers/commands.consumer.js';
import { createFailpoints, formatFailpoint, type Failpoints } from './infra/failpoints.js';
import { instrumentActivities } from './infra/instrumented-activities.js';
import { startHttpServer, type HealthState, type HttpServer } from './infra/http.js';
import { createLogger, type Logger } from './infra/logging.js';
import { createMetrics, type Metrics } from './infra/metrics.js';
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
}

/** What the machines give the bus. */
export interface WorkerParts {
  /** The machines' executor; a one-attempt executor (the bus tests' fakes) is retried in place. */
  readonly executor: CommandExecutor | AttemptExecutor;
  /** Startup recovery of every domain on this host; readiness waits for it. */
  readonly recover?: () => Promise<void>;
  /** Releases the adapters (libvirt connection, …) after the bus is closed. */
  readonly close?: () => Promise<void>;
}

export type WorkerFactory = (deps: WorkerDeps) => Promise<WorkerParts>;

/**
 * The real adapters and executor: libvirt (LibvirtHypervisor), storage (`createStorage`)
 * and the per-drive registry (DriveRegistry over `createActivities`). Imported lazily so
 * the CLI tools and the bus tests never load the native libvirt addon.
 */
export const createRealWorkerParts: WorkerFactory = async ({ config, logger, metrics, failpoints }) => {
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
    activities: instrumentActivities(createActivities({ hypervisor, storage, failpoints, claims }), metrics, { log: logger, storage }),
    concurrency: config.concurrency,
    stepTimeoutMs: config.stepTimeoutMs,
    retry: config.retry,
    claims,
    log: logger,
    onRetry: () => metrics.retries.inc(),
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
    close: async () => {
      reconciler.stop();
      await hypervisor.close();
    },
  };
};

export interface WorkerOptions {
  readonly config: Config;
  readonly logger?: Logger;
  readonly createParts?: WorkerFactory;
  /** Exit function of the crash failpoints; tests may replace it. */
  readonly crash?: () => never;
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
  if (config.failpoints.length > 0) log.warn({ failpoints: config.failpoints.map(formatFailpoint) }, 'failpoints enabled');

  const health: HealthState = { ready: false, live: true };
  let recovered = false;
  let attached = false;
  const updateReady = (): void => {
    health.ready = recovered && attached;
  };

  let http: HttpServer | null = null;
  if (config.httpPort !== 0) http = await startHttpServer(config.httpPort, health, metrics.registry, logger);

  let parts: WorkerParts;
  try {
    parts = await (options.createParts ?? createRealWorkerParts)({ config, logger, metrics, failpoints });
  } catch (err) {
    await http?.close();
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
  const executor = isCommandExecutor(parts.executor) ? parts.executor : inPlace(parts.executor, config.retry, () => metrics.retries.inc());
  const consumer = new CommandConsumer({
    bus,
    hostId: config.hostId,
    concurrency: config.concurrency,
    declareTopology: config.declareTopology,
    executor,
    retry: config.retry,
    logger,
    failpoints,
    metrics,
    onAttached: () => {
      attached = true;
      updateReady();
    },
  });

  let stopping: Promise<void> | null = null;
  const stop = (reason = 'stop'): Promise<void> =>
    (stopping ??= (async () => {
      log.info({ reason, inFlight: consumer.busy }, 'shutting down');
      health.ready = false;
      await consumer.stop();
      try {
        await executor.drain(config.drainTimeoutMs);
      } catch (err) {
        log.warn({ err }, 'drain did not finish; unfinished commands will be redelivered');
      }
      // The events of drained commands are still being confirmed; give them the same bound.
      if (!(await consumer.idle(config.drainTimeoutMs))) log.warn({ inFlight: consumer.busy }, 'closing with commands unacknowledged; they will be redelivered');
      await bus.close();
      await parts.close?.().catch((err: unknown) => log.warn({ err }, 'closing adapters failed'));
      health.live = false;
      await http?.close();
      log.info('stopped');
    })());

  try {
    // Recovery first: a command must never meet a drive whose last change is half done.
    if (parts.recover) {
      const t0 = Date.now();
      await parts.recover();
      log.info({ durationMs: Date.now() - t0 }, 'startup recovery finished');
    }
    recovered = true;
    consumer.attach();
    await bus.start();
  } catch (err) {
    await stop('startup failed');
    throw err;
  }
  updateReady();
  log.info({ concurrency: config.concurrency, httpPort: http?.port ?? null }, 'worker ready');
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
