import { randomUUID } from 'node:crypto';
import type { ChannelModel, ConfirmChannel } from 'amqplib';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config.js';
import { deadQueue } from '../../src/consumers/topology.js';
import { CdromError } from '../../src/domain/errors.js';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createActivities } from '../../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../../src/machines/drive.registry.js';
import { startWorker, type WorkerHandle } from '../../src/main.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { FakeStorage, blockPath } from '../fakes/storage.fake.js';
import { AMQP_URL, EventTap, deleteHostQueues, drainQueue, openTestConnection, publish, uniqueHost, waitFor } from '../support/amqp.js';
import { EMPTY_MD, ISO_A, ISO_B, ISO_MISSING } from '../support/world.js';

/**
 * Every outcome path end to end through the real broker with the real consumer, registry
 * and machine over the fake hypervisor and storage (the real adapters: test/e2e).
 */

let hostId: string;
let model: ChannelModel;
let ch: ConfirmChannel;
let tap: EventTap;
let worker: WorkerHandle | null = null;
let hv: FakeHypervisor;
let storage: FakeStorage;
let vmId: string;

beforeEach(async () => {
  hostId = uniqueHost();
  vmId = randomUUID();
  hv = new FakeHypervisor();
  storage = new FakeStorage();
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  hv.addVm(vmId, { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
  ({ model, ch } = await openTestConnection());
  tap = await EventTap.open(model, hostId);
  const config = loadConfig({ CDROM_HOST_ID: hostId, CDROM_AMQP_URL: AMQP_URL, CDROM_HTTP_PORT: '0', CDROM_RETRY_BASE_MS: '20', CDROM_RETRY_LIMIT: '3' });
  const registry = new DriveRegistry({ activities: createActivities({ hypervisor: hv, storage }), concurrency: 4, stepTimeoutMs: 5_000, log: silentLogger() });
  worker = await startWorker({ config, logger: silentLogger(), createParts: () => Promise.resolve({ executor: registry }) });
});

afterEach(async () => {
  await worker?.stop('test end');
  await model.close().catch(() => undefined);
  await deleteHostQueues(hostId);
});

const cmd = (media: unknown, commandId: string = randomUUID()) => ({ type: 'changeCD', version: 1, commandId, vmId, drive: 'sdc', media });

describe('the bus over the machine and the fakes', () => {
  it('load, change, eject: completed events with action, previous and current; the drive follows', async () => {
    await publish(ch, hostId, cmd(ISO_A));
    await publish(ch, hostId, cmd(ISO_B));
    await publish(ch, hostId, cmd(null));
    const events = await tap.count(3);
    expect(events.map((e) => [e.type, e.action])).toEqual([
      ['changeCD.completed', 'load'],
      ['changeCD.completed', 'change'],
      ['changeCD.completed', 'eject'],
    ]);
    expect(events[1]).toMatchObject({ previous: ISO_A, current: ISO_B, error: null });
    expect(hv.sourceOf(vmId, 'sdc')).toBeNull();
    expect(storage.activeVolumeIds()).toEqual([]);
  });

  it('failed: a missing volume is VOLUME_NOT_FOUND, acked, not dead-lettered', async () => {
    await publish(ch, hostId, cmd(ISO_MISSING));
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.failed', action: 'load', previous: null, current: null, error: { code: 'VOLUME_NOT_FOUND', retryable: false } });
    expect(await drainQueue(model, deadQueue(hostId))).toHaveLength(0);
  });

  it('rejected: an unknown field dead-letters the original with the reason', async () => {
    await publish(ch, hostId, { ...cmd(ISO_A), extra: true });
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.rejected', vmId, error: { code: 'INVALID_COMMAND' } });
    await waitFor(async () => (await drainQueue(model, deadQueue(hostId))).length === 1, 5_000, 'dead letter');
  });

  it('libvirt unreachable once: retried, recovered first, completed once', async () => {
    hv.failNext('updateDevice', { error: new CdromError('INTERNAL', 'cannot recv data: connection reset', { retryable: true }) });
    await publish(ch, hostId, cmd(ISO_A));
    const [event] = await tap.count(1);
    expect(event).toMatchObject({ type: 'changeCD.completed', action: 'load', previous: null, current: ISO_A });
    expect(hv.calls.updateDevice).toBe(2);
    expect(hv.sourceOf(vmId, 'sdc')?.path).toBe(blockPath(ISO_A));
  });

  it('the same commandId again: the same event, the drive changed once', async () => {
    const id = randomUUID();
    await publish(ch, hostId, cmd(ISO_A, id));
    await tap.count(1);
    await publish(ch, hostId, cmd(ISO_A, id));
    const events = await tap.count(2);
    const strip = (e: (typeof events)[number]) => ({ type: e.type, commandId: e.commandId, action: e.action, previous: e.previous, current: e.current });
    expect(strip(events[1] as (typeof events)[number])).toEqual(strip(events[0] as (typeof events)[number]));
    expect(hv.calls.updateDevice).toBe(1);
  });
});
