import { randomUUID } from 'node:crypto';
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { VolumeClaims } from '../../src/domain/volume-claims.js';
import { instrumentActivities } from '../../src/infra/instrumented-activities.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createActivities } from '../../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../../src/machines/drive.registry.js';
import type { WorkerFactory } from '../../src/main.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { FakeStorage } from '../fakes/storage.fake.js';
import { EMPTY_MD, ISO_A, ISO_B } from './world.js';

/**
 * The real per-drive registry and activities over the fakes, instrumented the way
 * `createRealWorkerParts` does it (metrics, and the step spans under the command spans
 * the worker's tracing hands in), for the tracing tests of the whole consumer.
 */
export class TracedHost {
  readonly hv = new FakeHypervisor();
  readonly storage = new FakeStorage(['/iso']);
  readonly vmId = randomUUID();

  constructor() {
    this.storage.addVolume(ISO_A);
    this.storage.addVolume(ISO_B);
    this.hv.addVm(this.vmId, { drives: { sdc: null }, metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
  }

  readonly parts: WorkerFactory = ({ metrics, tracing, unacked }) => {
    const claims = new VolumeClaims();
    const activities = instrumentActivities(createActivities({ hypervisor: this.hv, storage: this.storage, claims, unacked }), metrics, { tracing });
    const registry = new DriveRegistry({
      activities,
      claims,
      concurrency: 4,
      stepTimeoutMs: 5_000,
      retry: { limit: 3, baseDelayMs: 10, maxDelayMs: 20 },
      log: silentLogger(),
      idleTtlMs: 0,
    });
    return Promise.resolve({ executor: registry });
  };
}

/** The spans of one trace as a tree: the consumer span and its children, by name. */
export function spanTree(spans: readonly ReadableSpan[], commandId: string): { root: ReadableSpan; children: ReadableSpan[] } {
  const root = spans.find((s) => s.attributes['cdrom.command_id'] === commandId);
  if (root === undefined) throw new Error(`no span for command ${commandId} among ${spans.map((s) => s.name).join(', ')}`);
  const id = root.spanContext().spanId;
  const children = spans.filter((s) => s.parentSpanContext?.spanId === id).sort((a, b) => hr(a.startTime) - hr(b.startTime));
  return { root, children };
}

const hr = (t: readonly [number, number]): number => t[0] * 1e9 + t[1];
