import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatSoakReport, runCrashSoak } from '../../scripts/crash-soak.js';
import { canUseLoopLvm } from '../support/storage.js';
import { acquireE2eLock } from '../support/e2e.js';

/**
 * A short run of `scripts/crash-soak.ts` in CI: 50 commands over two VMs, the worker
 * process SIGKILLed 5 times while they run. The script's own checks decide: an event for
 * every command and identical repeats, every drive holding what its last command left
 * with settled metadata, no leaked volume, and as many media changes seen by the VMs
 * (tray-change events) as the events report — nothing redone after a kill (a change QEMU
 * refused may cycle the tray without changing the media: the script allows for those).
 * CRASH_SOAK_SEED replays a run.
 */
describe.skipIf(!canUseLoopLvm())('crash soak, short (real RabbitMQ, libvirt/QEMU, loop-backed LVM, worker process)', () => {
  let release: (() => Promise<void>) | null = null;

  beforeAll(async () => {
    release = await acquireE2eLock();
  }, 660_000);

  afterAll(async () => {
    await release?.();
  });

  it('50 commands, 5 SIGKILLs: every command answered, drives and volumes consistent, no change done twice', async () => {
    const lines: string[] = [];
    const seed = process.env['CRASH_SOAK_SEED'];
    const report = await runCrashSoak({
      commands: 50,
      kills: 5,
      maxWaitMs: 800,
      drainTimeoutMs: 60_000,
      ...(seed !== undefined ? { seed: Number(seed) } : {}),
      out: (l) => lines.push(l),
    });
    const text = [...lines, ...formatSoakReport(report)].join('\n');
    if (process.env['E2E_VERBOSE']) process.stderr.write(`${text}\n`);
    expect(report.problems, text).toEqual([]);
    expect(report.kills).toBe(5);
    // Kills that hit an idle worker would test nothing.
    expect(report.killedMidWork, text).toBeGreaterThanOrEqual(1);
  }, 180_000);
});
