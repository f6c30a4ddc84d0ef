import { randomUUID } from 'node:crypto';
import type { ChangeCdCommand } from '../src/contracts/schemas.js';
import { OVIRT_VM_NS } from '../src/domain/ports.js';
import { silentLogger } from '../src/infra/logging.js';
import { createActivities } from '../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../src/machines/drive.registry.js';
import { FakeHypervisor } from '../test/fakes/hypervisor.fake.js';
import { FakeStorage } from '../test/fakes/storage.fake.js';
import { EMPTY_MD, ISO_A, ISO_B } from '../test/support/world.js';
import { argInt, round, rssMb, runSection, sleep } from './lib/common.js';

/**
 * Item 4: RSS of the executor after 20,000 commands over 10,000 distinct drives (the
 * registry directly, over the fakes, at most `concurrency` commands in flight as the
 * consumer's prefetch allows), and after the idle actors are reaped. Run with
 * --expose-gc: every figure is taken after a full GC. The fakes keep each VM's metadata
 * and journal (state a real hypervisor holds, not the worker): `fakeStateMb` estimates
 * it so it can be told apart.
 */

export interface MemoryResult {
  readonly commands: number;
  readonly drives: number;
  readonly startRssMb: number;
  readonly peakRssMb: number;
  readonly afterRssMb: number;
  readonly reapedRssMb: number;
  readonly growthAfterReapMb: number;
  readonly liveDrivesBeforeReap: number;
  readonly idleTtlMs: number | 'default';
  readonly heapTotalReapedMb: number;
  readonly heapUsedStartMb: number;
  readonly heapUsedReapedMb: number;
  readonly fakeStateMb: number;
}

const argv = process.argv.slice(2);

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g === undefined) throw new Error('run with node --expose-gc');
  g();
  g();
}

export async function memory(commands: number, drives: number, concurrency: number, idleTtlMs?: number): Promise<MemoryResult> {
  const hv = new FakeHypervisor();
  const storage = new FakeStorage();
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  const vmIds = Array.from({ length: drives }, () => randomUUID());
  for (const vmId of vmIds) hv.addVm(vmId, { metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
  const registry = new DriveRegistry({ activities: createActivities({ hypervisor: hv, storage }), concurrency, stepTimeoutMs: 60_000, log: silentLogger(), ...(idleTtlMs === undefined ? {} : { idleTtlMs }) });
  const command = (i: number): ChangeCdCommand => ({
    type: 'changeCD',
    version: 1,
    commandId: randomUUID(),
    vmId: vmIds[i % drives] as string,
    drive: 'sdc',
    media: Math.floor(i / drives) % 2 === 0 ? ISO_A : ISO_B,
  });
  // warm the JIT and the allocator on other VMs' worth of work, then measure from here
  await sleep(50);
  gc();
  const start = process.memoryUsage();
  let peak = start.rss;
  const sampler = setInterval(() => (peak = Math.max(peak, process.memoryUsage().rss)), 20);
  let next = 0;
  const lane = async (): Promise<void> => {
    for (let i = next++; i < commands; i = next++) {
      const e = await registry.execute(command(i));
      if (e.kind !== 'result' || e.result.outcome !== 'completed') throw new Error(`command ${i}: ${JSON.stringify(e)}`);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, lane));
  clearInterval(sampler);
  peak = Math.max(peak, process.memoryUsage().rss);
  gc();
  const after = process.memoryUsage();
  const live = registry.liveDrives;
  registry.reap(0);
  await sleep(100);
  gc();
  const reaped = process.memoryUsage();
  // what the fake hypervisor holds: every VM's metadata and journal strings
  let fakeBytes = 0;
  for (const vmId of vmIds) {
    fakeBytes += (hv.metadataOf(vmId, OVIRT_VM_NS.uri)?.length ?? 0) + (hv.metadataOf(vmId, 'http://ovirt.org/cdrom-worker/1.0')?.length ?? 0);
  }
  const mb = (b: number): number => round(b / 2 ** 20, 1);
  return {
    commands,
    drives,
    startRssMb: mb(start.rss),
    peakRssMb: mb(peak),
    afterRssMb: mb(after.rss),
    reapedRssMb: mb(reaped.rss),
    growthAfterReapMb: mb(reaped.rss - start.rss),
    liveDrivesBeforeReap: live,
    idleTtlMs: idleTtlMs ?? 'default',
    heapTotalReapedMb: mb(reaped.heapTotal),
    heapUsedStartMb: mb(start.heapUsed),
    heapUsedReapedMb: mb(reaped.heapUsed),
    fakeStateMb: mb(fakeBytes * 2),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  void rssMb;
  const ttl = argv.includes('--idle-ttl') ? argInt(argv, 'idle-ttl', 0) : undefined;
  await runSection('memory', () => memory(argInt(argv, 'commands', 20_000), argInt(argv, 'drives', 10_000), argInt(argv, 'concurrency', 16), ttl));
}
