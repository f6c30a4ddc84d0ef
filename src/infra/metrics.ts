import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';

/** The worker's Prometheus metrics, on a registry of its own (no global state). */
export interface Metrics {
  readonly registry: Registry;
  /** Commands by final outcome (completed, failed, rejected, dead-lettered) and action. */
  readonly commands: Counter<'outcome' | 'action'>;
  readonly deadLettered: Counter<'reason'>;
  readonly retries: Counter;
  readonly inFlight: Gauge;
  readonly brokerConnected: Gauge;
}

export function createMetrics(options: { defaultMetrics?: boolean } = {}): Metrics {
  const registry = new Registry();
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
    retries: new Counter({ name: 'cdrom_command_retries_total', help: 'retryable failures that were tried again', registers: [registry] }),
    inFlight: new Gauge({ name: 'cdrom_commands_in_flight', help: 'commands received and not yet acknowledged', registers: [registry] }),
    brokerConnected: new Gauge({ name: 'cdrom_broker_connected', help: '1 while connected to the broker', registers: [registry] }),
  };
}
