import type { Command } from 'commander';
import type { Config } from '../config.js';
import { UUID_RE, type Pdiv } from '../domain/media.js';
import type { HypervisorPort, StoragePort } from '../domain/ports.js';
import type { Logger } from '../infra/logging.js';
import type { Settlement } from '../machines/cdrom.machine.js';
import { CliError, configOrExit } from './common.js';

/**
 * `cdrom-worker recover [--vm ID]`: the startup reconciliation, once, over the real
 * adapters — every CD-ROM whose metadata records a change in progress is finished or
 * discarded to match what libvirt shows now, and (for a whole-host pass) block volumes
 * no drive holds and no metadata names are torn down. Prints what it did.
 */

interface RecoverOptions {
  vm?: string;
  json?: boolean;
  verbose?: boolean;
}

/** The real hypervisor and storage of this host, as the worker opens them. */
export interface HostAdapters {
  readonly hypervisor: HypervisorPort & { close(): Promise<void> };
  readonly storage: StoragePort;
  readonly logger: Logger;
}

export async function openHostAdapters(config: Config, verbose: boolean): Promise<HostAdapters> {
  const [{ createLogger }, { LibvirtHypervisor }, { createStorage }] = await Promise.all([
    import('../infra/logging.js'),
    import('../infra/libvirt/libvirt.hypervisor.js'),
    import('../infra/storage/index.js'),
  ]);
  // Logs go to stderr so that stdout carries only the report.
  const logger = createLogger({ level: verbose ? config.logLevel : 'warn', destination: process.stderr }).child({ hostId: config.hostId });
  const hypervisor = await LibvirtHypervisor.open({ uri: config.libvirtUri, logger, callTimeoutMs: config.stepTimeoutMs });
  const storage = createStorage({ storageRoot: config.storageRoot, activation: config.lvmActivation, isoDirs: config.isoDirs, logger });
  return { hypervisor, storage, logger };
}

export interface DriveRecoveryLine {
  readonly vmId: string;
  readonly drive: string;
  readonly row: string | null;
  readonly steps: number;
  readonly warnings: readonly { code: string; message: string }[];
  readonly error: { code: string; message: string } | null;
}

export interface RecoverReport {
  readonly hostId: string;
  readonly vm: string | null;
  readonly domains: number;
  readonly drives: number;
  readonly actions: number;
  readonly recovered: readonly DriveRecoveryLine[];
  readonly failed: readonly { vmId: string; drive: string | null; message: string }[];
  readonly orphansTornDown: readonly Pdiv[];
}

/** One reconciliation pass, exactly as the worker runs it at startup. */
export async function runRecovery(config: Config, adapters: HostAdapters, vm: string | undefined): Promise<RecoverReport> {
  const [{ createActivities }, { DriveRegistry }, { Reconciler }] = await Promise.all([
    import('../machines/cdrom.activities.js'),
    import('../machines/drive.registry.js'),
    import('../machines/reconciler.js'),
  ]);
  const { hypervisor, storage, logger } = adapters;
  const registry = new DriveRegistry({
    activities: createActivities({ hypervisor, storage }),
    concurrency: config.concurrency,
    stepTimeoutMs: config.stepTimeoutMs,
    log: logger,
  });
  const recovered: DriveRecoveryLine[] = [];
  // Every drive the reconciler puts through recovery, with what recovery decided.
  const drives = {
    recover: async (vmId: string, drive: string): Promise<Settlement> => {
      const s = await registry.recover(vmId, drive);
      if (s.kind === 'recovered') {
        recovered.push({
          vmId,
          drive,
          row: s.report?.row ?? null,
          steps: s.report?.steps ?? 0,
          warnings: s.report?.warnings ?? [],
          error: s.error === null ? null : { code: s.error.code, message: s.error.message },
        });
      }
      return s;
    },
  };
  // CDROM_DOMAIN_FILTER scopes it as it scopes the worker's own passes.
  const reconciler = new Reconciler({ hypervisor, storage, drives, log: logger, intervalMs: 0, domainFilter: config.domainFilter });
  try {
    const r = await reconciler.reconcileAll(vm);
    return {
      hostId: config.hostId,
      vm: vm ?? null,
      domains: r.domains,
      drives: r.drives,
      actions: r.actions,
      recovered,
      failed: r.failed,
      orphansTornDown: r.orphansTornDown,
    };
  } finally {
    await registry.drain(config.drainTimeoutMs).catch(() => undefined);
  }
}

export function formatRecoverReport(r: RecoverReport): string[] {
  const lines: string[] = [];
  const scope = r.vm === null ? 'every running domain' : `domain ${r.vm}`;
  lines.push(`recovery on host ${r.hostId} (${scope}): ${r.domains} domain(s), ${r.drives} CD-ROM(s), ${r.actions} step(s) taken`);
  for (const d of r.recovered) {
    const what = d.error !== null ? `FAILED ${d.error.code}: ${d.error.message}` : `${d.row ?? '?'} (${d.steps} step${d.steps === 1 ? '' : 's'})`;
    lines.push(`  ${d.vmId} ${d.drive}: ${what}`);
    for (const w of d.warnings) lines.push(`    warning ${w.code}: ${w.message}`);
  }
  for (const p of r.orphansTornDown) lines.push(`  orphan volume torn down: ${p.domainID}/${p.imageID}/${p.volumeID}`);
  for (const f of r.failed) {
    if (!r.recovered.some((d) => d.vmId === f.vmId && d.drive === f.drive)) lines.push(`  ${f.vmId} ${f.drive ?? '(domain)'}: FAILED ${f.message}`);
  }
  if (r.recovered.length === 0 && r.orphansTornDown.length === 0 && r.failed.length === 0) lines.push('  nothing to recover');
  if (r.vm !== null) lines.push('  (orphan volumes are reaped only by a whole-host pass, without --vm)');
  return lines;
}

export function registerRecover(program: Command): void {
  program
    .command('recover')
    .description("reconcile CD-ROMs with what libvirt shows now (the worker's startup recovery, once) and print what was done")
    .option('--vm <uuid>', 'only this domain (orphan volumes are then left alone)')
    .option('--json', 'print the report as JSON')
    .option('--verbose', 'log at CDROM_LOG_LEVEL on stderr (default: warnings only)')
    .addHelpText(
      'after',
      [
        '',
        'A drive is touched only when its metadata records a change in progress (state="loading"/"ejecting"',
        'or a vdsm <change> element); recovery never changes what the drive holds, it finishes or discards',
        'the recorded change (metadata, volume activation). Configuration: the CDROM_* variables of `run`.',
        'Run it while the worker is stopped (or idle): it does not coordinate with a running worker.',
        'Exit code: 0 when every drive was reconciled, 1 when some could not be (listed as FAILED).',
      ].join('\n'),
    )
    .action(async (o: RecoverOptions) => {
      const config = configOrExit();
      if (o.vm !== undefined && !UUID_RE.test(o.vm)) {
        throw new CliError(`--vm must be a domain UUID, got ${JSON.stringify(o.vm)}`, 2, 'CLI_USAGE');
      }
      const adapters = await openHostAdapters(config, o.verbose === true);
      try {
        if (o.vm !== undefined) {
          const known = await adapters.hypervisor.listDomains();
          if (!known.some((d) => d.vmId.toLowerCase() === o.vm?.toLowerCase())) throw new CliError(`no domain ${o.vm} on ${config.libvirtUri}`);
        }
        const report = await runRecovery(config, adapters, o.vm);
        if (o.json) console.log(JSON.stringify(report, null, 2));
        else for (const line of formatRecoverReport(report)) console.log(line);
        if (report.failed.length > 0) process.exitCode = 1;
      } finally {
        await adapters.hypervisor.close();
      }
    });
}
