import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Media } from '../../src/domain/media.js';
import type { PreparedVolume } from '../../src/domain/ports.js';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { blockPath } from '../fakes/storage.fake.js';
import { EMPTY_MD, ISO_A, ISO_B, makeWorld, resultOf } from '../support/world.js';

/** A storage whose prepare waits until released, to hold commands in flight. */
function gatePrepare(w: ReturnType<typeof makeWorld>) {
  const started: string[] = [];
  const waiters: (() => void)[] = [];
  const real = w.storage.prepareVolume.bind(w.storage);
  w.storage.prepareVolume = async (m: Media): Promise<PreparedVolume> => {
    started.push('volumeID' in m ? m.volumeID : m.path);
    await new Promise<void>((r) => waiters.push(r));
    return real(m);
  };
  return { started, releaseAll: () => waiters.splice(0).forEach((r) => r()) };
}

const tick = () => new Promise((r) => setTimeout(r, 5));

describe('per-drive registry', () => {
  it('runs commands for one drive one at a time, in arrival order', async () => {
    const w = makeWorld();
    const order: string[] = [];
    const ops = [ISO_A, null, ISO_B, ISO_A, null].map((m, i) => w.run(m).then((e) => order.push(`${i}:${resultOf(e).action}`)));
    await Promise.all(ops);
    expect(order).toEqual(['0:load', '1:eject', '2:load', '3:change', '4:eject']);
    expect(w.source()).toBeNull();
  });

  it('runs different drives concurrently, at most `concurrency` at once', async () => {
    const w = makeWorld({ concurrency: 2 });
    const vms = [randomUUID(), randomUUID(), randomUUID()];
    for (const id of vms) w.hv.addVm(id, { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
    const gate = gatePrepare(w);
    const runs = vms.map((vmId) => w.run(ISO_A, { vmId }));
    await tick();
    expect(gate.started).toHaveLength(2);
    gate.releaseAll();
    await tick();
    expect(gate.started).toHaveLength(3);
    gate.releaseAll();
    const results = await Promise.all(runs);
    expect(results.map((r) => resultOf(r).outcome)).toEqual(['completed', 'completed', 'completed']);
    for (const vmId of vms) expect(w.hv.sourceOf(vmId, 'sdc')?.path).toBe(blockPath(ISO_A));
  });

  it('stops idle actors: memory follows the drives in flight, not every drive seen', async () => {
    const w = makeWorld();
    for (let i = 0; i < 50; i++) {
      const vmId = randomUUID();
      w.hv.addVm(vmId, { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
      await w.run(ISO_A, { vmId });
    }
    expect(w.registry.liveDrives).toBe(0);
  });

  it('keeps an idle drive\'s actor for the idle TTL, then reaps it', async () => {
    const w = makeWorld({ idleTtlMs: 40 });
    resultOf(await w.run(ISO_A));
    resultOf(await w.run(ISO_B));
    expect(w.registry.liveDrives).toBe(1);
    await new Promise((r) => setTimeout(r, 150));
    expect(w.registry.liveDrives).toBe(0);
    expect(resultOf(await w.run(null)).action).toBe('eject');
  });

  it('keeps at most maxIdle idle actors, the longest idle going first', async () => {
    const w = makeWorld();
    const { DriveRegistry } = await import('../../src/machines/drive.registry.js');
    const { createActivities } = await import('../../src/machines/cdrom.activities.js');
    const { silentLogger } = await import('../../src/infra/logging.js');
    const registry = new DriveRegistry({ activities: createActivities({ hypervisor: w.hv, storage: w.storage }), concurrency: 4, stepTimeoutMs: 5_000, log: silentLogger(), idleTtlMs: 60_000, maxIdle: 2 });
    for (let i = 0; i < 5; i++) {
      const vmId = randomUUID();
      w.hv.addVm(vmId, { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
      resultOf(await registry.execute(w.command(ISO_A, { vmId })));
    }
    expect(registry.liveDrives).toBe(2);
    await registry.drain(1_000);
    expect(registry.liveDrives).toBe(0);
  });

  it('drain waits for in-flight work and then refuses new commands with a retry', async () => {
    const w = makeWorld();
    const gate = gatePrepare(w);
    const inflight = w.run(ISO_A);
    await tick();
    const drained = w.registry.drain(2_000);
    gate.releaseAll();
    await drained;
    expect(resultOf(await inflight).outcome).toBe('completed');
    expect(await w.run(ISO_B)).toMatchObject({ kind: 'retry' });
  });
});
