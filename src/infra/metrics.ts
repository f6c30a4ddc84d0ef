import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/** The worker's Prometheus metrics, on a registry of its own (no global state). */
export interface Metrics {
  readonly registry: Registry;
  /** Commands by final outcome (completed, failed, rejected, dead-lettered) and action. */
  readonly commands: Counter<'outcome' | 'action'>;
  readonly deadLettered: Counter<'reason'>;
  /** reply_to copies that did not arrive (best effort, never retried), by why. */
  readonly replyCopiesFailed: Counter<'reason'>;
  readonly retries: Counter;
  readonly inFlight: Gauge;
  readonly brokerConnected: Gauge;
  /** Time from the start of a command's work on its drive to its settled result. */
  readonly commandDuration: Histogram<'action' | 'outcome'>;
  /** Recovery decisions that changed something, by the design page row. */
  readonly recoveryActions: Counter<'row'>;
  /** One effect of a flow (see instrumented-activities.ts), by step and whether it threw. */
  readonly stepDuration: Histogram<'step' | 'result'>;
  /** Block volumes active on this host, as the storage adapter last listed them. */
  readonly activeVolumes: Gauge;
  /** Calls past CDROM_STEP_TIMEOUT_MS that have not returned (CONTRACT §9); set on scrape. */
  readonly hungCalls: Gauge;
  /** Where `hungCalls` reads its value at each scrape. */
  countHungCalls(source: () => number): void;
  /**
   * 1 while /readyz says ready, read at each scrape: an alert needs readiness as a series
   * (a probe of /readyz would need a blackbox exporter next to every worker).
   */
  readonly ready: Gauge;
  /** Where `ready` reads its value at each scrape. */
  reportReadiness(source: () => boolean): void;
  /**
   * Recoveries that failed (retried on the next pass), by scope: `drive` (its recovery
   * threw) or `domain` (the domain could not be read). `recoveryActions` counts only
   * successes, so a drive stuck failing would otherwise be invisible.
   */
  readonly recoveryFailures: Counter<'scope'>;
  /** 1 while this worker waits as the standby of another worker for its host (not ready, on purpose). */
  readonly standby: Gauge;
}

/** The steps of a flow that `stepDuration` times; one per effect port call. */
export const STEPS = ['prepare', 'update', 'teardown', 'metadata', 'journal'] as const;
export type Step = (typeof STEPS)[number];

export function createMetrics(options: { defaultMetrics?: boolean } = {}): Metrics {
  const metrics = createSeries(options);
  // A labelled counter has no series until its first increment, and Prometheus's rate()
  // and increase() need two samples: the first failed command, dead letter or failed
  // recovery after a start would never show in an alert. The usual label values start at 0.
  for (const outcome of ['completed', 'failed'] as const) for (const action of ['load', 'eject', 'change'] as const) metrics.commands.inc({ outcome, action }, 0);
  metrics.commands.inc({ outcome: 'rejected', action: 'none' }, 0);
  for (const reason of ['rejected', 'retries-exhausted'] as const) metrics.deadLettered.inc({ reason }, 0);
  for (const scope of ['drive', 'domain'] as const) metrics.recoveryFailures.inc({ scope }, 0);
  // The same for the histograms: their quantiles (the latency alert, the dashboard) are rates too.
  for (const outcome of ['completed', 'failed'] as const) for (const action of ['load', 'eject', 'change'] as const) metrics.commandDuration.zero({ action, outcome });
  for (const step of STEPS) for (const result of ['ok', 'error'] as const) metrics.stepDuration.zero({ step, result });
  return metrics;
}

function createSeries(options: { defaultMetrics?: boolean }): Metrics {
  const registry = new Registry();
  let hungSource = (): number => 0;
  let readySource = (): boolean => false;
  if (options.defaultMetrics !== false) collectDefaultMetrics({ register: registry, prefix: 'cdrom_worker_' });
  return {
    registry,
    commands: new Counter({
      name: 'cdrom_commands_total',
      help: 'changeCD commands by outcome and action',
      labelNames: ['outcome', 'action'] as const,
      registers: [registry],
    }),
    deadLettered: new Counter({
      name: 'cdrom_dead_lettered_total',
      help: 'messages sent to cdrom.dead, by reason (rejected, retries-exhausted)',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    replyCopiesFailed: new Counter({
      name: 'cdrom_reply_copies_failed_total',
      help: 'reply_to copies of result events that were not delivered, never retried, by reason (refused, unroutable, nacked, lost)',
      labelNames: ['reason'] as const,
      registers: [registry],
    }),
    retries: new Counter({ name: 'cdrom_command_retries_total', help: 'retryable failures that were tried again', registers: [registry] }),
    inFlight: new Gauge({ name: 'cdrom_commands_in_flight', help: 'commands received and not yet acknowledged', registers: [registry] }),
    brokerConnected: new Gauge({ name: 'cdrom_broker_connected', help: '1 while connected to the broker', registers: [registry] }),
    hungCalls: new Gauge({
      name: 'cdrom_hung_calls',
      help: 'libvirt and storage calls past CDROM_STEP_TIMEOUT_MS that have not returned (the drives they are on are held)',
      registers: [registry],
      collect() {
        this.set(hungSource());
      },
    }),
    countHungCalls: (source) => {
      hungSource = source;
    },
    ready: new Gauge({
      name: 'cdrom_ready',
      help: '1 while the worker is ready (startup recovery done, consuming its host queue), as /readyz',
      registers: [registry],
      collect() {
        this.set(readySource() ? 1 : 0);
      },
    }),
    reportReadiness: (source) => {
      readySource = source;
    },
    standby: new Gauge({
      name: 'cdrom_standby',
      help: '1 while this worker waits as the standby of another worker for its host (single active consumer); it is not ready meanwhile',
      registers: [registry],
    }),
    recoveryFailures: new Counter({
      name: 'cdrom_recovery_failures_total',
      help: 'recoveries that failed and wait for the next pass, by scope (drive: its recovery threw; domain: the domain could not be read)',
      labelNames: ['scope'] as const,
      registers: [registry],
    }),
    commandDuration: new Histogram({
      name: 'cdrom_command_duration_seconds',
      help: 'time a command spent on its drive, by action and outcome',
      labelNames: ['action', 'outcome'] as const,
      buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    recoveryActions: new Counter({
      name: 'cdrom_recovery_actions_total',
      help: 'drives whose half-done change recovery finished or discarded, by recovery row',
      labelNames: ['row'] as const,
      registers: [registry],
    }),
    stepDuration: new Histogram({
      name: 'cdrom_step_duration_seconds',
      help: 'time of one step of a flow (prepare, update, teardown, metadata, journal), by result (ok, error)',
      labelNames: ['step', 'result'] as const,
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers: [registry],
    }),
    activeVolumes: new Gauge({
      name: 'cdrom_active_volumes',
      help: 'block volumes active on this host (storage listing refreshed after every prepare, teardown and recovery)',
      registers: [registry],
    }),
  };
}
