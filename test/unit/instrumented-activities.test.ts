import { randomUUID } from 'node:crypto';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import type { ChangeCdCommand } from '../../src/contracts/schemas.js';
import type { Media } from '../../src/domain/media.js';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { instrumentActivities } from '../../src/infra/instrumented-activities.js';
import { createLogger } from '../../src/infra/logging.js';
import { createMetrics } from '../../src/infra/metrics.js';
import { createActivities } from '../../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../../src/machines/drive.registry.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { FakeStorage } from '../fakes/storage.fake.js';
import { EMPTY_MD, ISO_A, ISO_B } from '../support/world.js';

/** The step-timing decorator over the real activities and the fakes. */

interface LogLine {
  readonly msg: string;
  readonly step?: string;
  readonly commandId?: string | null;
  readonly vmId?: string;
  readonly drive?: string;
  readonly volume?: string | null;
  readonly durationMs?: number;
}

function setup(refreshIntervalMs = 0) {
  const hv = new FakeHypervisor();
  const storage = new FakeStorage(['/iso']);
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  const vmId = randomUUID();
  hv.addVm(vmId, { drives: { sdc: null }, metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
  const metrics = createMetrics({ defaultMetrics: false });
  const lines: LogLine[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const l of chunk.toString('utf8').split('\n').filter(Boolean)) lines.push(JSON.parse(l) as LogLine);
      done();
    },
  });
  const log = createLogger({ level: 'debug', destination: sink });
  const activities = instrumentActivities(createActivities({ hypervisor: hv, storage }), metrics, { log, storage, refreshIntervalMs });
  const registry = new DriveRegistry({ activities, concurrency: 4, stepTimeoutMs: 5_000, log });
  const command = (media: Media | null): ChangeCdCommand => ({ type: 'changeCD', version: 1, commandId: randomUUID(), vmId, drive: 'sdc', media });
  return { hv, storage, metrics, lines, registry, command, vmId };
}

async function histogramCounts(metrics: ReturnType<typeof createMetrics>): Promise<Map<string, number>> {
  const m = await metrics.stepDuration.get();
  const out = new Map<string, number>();
  for (const v of m.values) {
    if (v.metricName === 'cdrom_step_duration_seconds_count') out.set(`${String(v.labels['step'])}/${String(v.labels['result'])}`, v.value);
  }
  return out;
}

const settle = (): Promise<void> => new Promise((r) => setTimeout(r, 20));

describe('instrumentActivities', () => {
  it('times every step of load, change and eject and logs them with the command ids', async () => {
    const w = setup();
    const load = w.command(ISO_A);
    const change = w.command(ISO_B);
    const eject = w.command(null);
    for (const c of [load, change, eject]) expect((await w.registry.execute(c)).kind).toBe('result');

    const counts = await histogramCounts(w.metrics);
    // load: prepare, update; change: prepare, update, teardown; eject: update, teardown
    expect(counts.get('prepare/ok')).toBe(2);
    expect(counts.get('update/ok')).toBe(3);
    expect(counts.get('teardown/ok')).toBe(2);
    // pending + done record per command
    expect(counts.get('journal/ok')).toBe(6);
    expect(counts.get('metadata/ok')).toBeGreaterThanOrEqual(6);

    const steps = w.lines.filter((l) => l.step !== undefined);
    for (const l of steps) expect(typeof l.durationMs).toBe('number');
    const prepareA = steps.find((l) => l.step === 'prepare' && l.volume === ISO_A.volumeID);
    expect(prepareA).toMatchObject({ commandId: load.commandId, vmId: w.vmId, drive: 'sdc' });
    const teardownB = steps.find((l) => l.step === 'teardown' && l.volume === ISO_B.volumeID);
    expect(teardownB).toMatchObject({ commandId: eject.commandId, drive: 'sdc' });
    expect(steps.filter((l) => l.step === 'update').map((l) => l.commandId)).toEqual([load.commandId, change.commandId, eject.commandId]);
  });

  it('records a failing step with result=error and lets the error through', async () => {
    const w = setup();
    w.storage.failNext('prepare');
    const exec = await w.registry.execute(w.command(ISO_A));
    expect(exec.kind === 'result' && exec.result.outcome).toBe('failed');
    expect((await histogramCounts(w.metrics)).get('prepare/error')).toBe(1);
    expect(w.lines.some((l) => l.step === 'prepare' && l.msg === 'step prepare failed')).toBe(true);
  });

  it('keeps the active-volumes gauge equal to the storage listing', async () => {
    const w = setup();
    const gauge = async (): Promise<number> => (await w.metrics.activeVolumes.get()).values[0]?.value ?? -1;
    await settle();
    expect(await gauge()).toBe(0);
    await w.registry.execute(w.command(ISO_A));
    await settle();
    expect(await gauge()).toBe(1);
    expect(await gauge()).toBe(w.storage.activeVolumeIds().length);
    await w.registry.execute(w.command(ISO_B));
    await settle();
    expect(await gauge()).toBe(1);
    await w.registry.execute(w.command(null));
    await settle();
    expect(await gauge()).toBe(0);
  });

  it('moves the active-volumes gauge with its own prepares and teardowns at once, not at the next listing', async () => {
    // listings at most once a minute: only the first one runs during this test
    const w = setup(60_000);
    const gauge = async (): Promise<number> => (await w.metrics.activeVolumes.get()).values[0]?.value ?? -1;
    await settle();
    expect(await gauge()).toBe(0);
    await w.registry.execute(w.command(ISO_A));
    expect(await gauge()).toBe(1);
    await w.registry.execute(w.command(ISO_B));
    expect(await gauge()).toBe(1);
    await w.registry.execute(w.command(null));
    expect(await gauge(), 'right after the eject').toBe(0);
    expect(w.storage.activeVolumeIds()).toEqual([]);
  });
});
