import { CdromError, toCdromError, type WarningInfo } from '../domain/errors.js';
import { KeyedMutex } from '../domain/keyed-mutex.js';
import { driveKey, isPdiv, type Media, type Pdiv } from '../domain/media.js';
import { Journal, type JournalRecord, type PendingRecord, type DoneRecord } from '../domain/metadata/journal.metadata.js';
import { VmMetadata, type CdState, type DriveMetadata } from '../domain/metadata/ovirt-vm.metadata.js';
import { JOURNAL_NS, OVIRT_VM_NS, type MetadataNamespace, type DriveSource, type HypervisorPort, type PreparedVolume, type StoragePort, type TeardownResult } from '../domain/ports.js';
import { VolumeClaims } from '../domain/volume-claims.js';
import type { UnackedCommands } from '../domain/unacked-commands.js';
import { decideRecovery, sourceHolds, volumesToCheck, type RecoveryRow } from '../domain/recovery.js';
import { NO_FAILPOINTS, type Failpoint, type Failpoints } from '../domain/failpoints.js';

/**
 * The side effects of the CD-ROM machine ("activities"), made from injected ports. The
 * machine only sees their types; tests build them over the fakes. Each is idempotent
 * where the design page needs it to be, and every failure is a `CdromError`.
 */

export type MetadataEdit =
  | { readonly op: 'add'; readonly pdiv: Pdiv; readonly state: CdState }
  | { readonly op: 'mark'; readonly pdiv: Pdiv; readonly state: CdState }
  | { readonly op: 'clear-state'; readonly state: CdState }
  | { readonly op: 'remove'; readonly state: CdState };

export interface DriveRef {
  readonly vmId: string;
  readonly drive: string;
}

export interface Inspection {
  readonly source: DriveSource | null;
  readonly metadata: DriveMetadata;
  /** what the drive holds, in the command's media form */
  readonly current: Media | null;
  readonly record: JournalRecord | undefined;
  /** a flow was in progress (state= or vdsm <change>) */
  readonly pending: boolean;
}

export interface RecoveryReport {
  readonly row: RecoveryRow;
  readonly steps: number;
  readonly warnings: readonly WarningInfo[];
}

export interface Activities {
  inspect(input: DriveRef & { readonly commandId: string | null }): Promise<Inspection>;
  recover(input: DriveRef): Promise<RecoveryReport>;
  editMetadata(input: DriveRef & { readonly edits: readonly MetadataEdit[]; readonly failpoint?: Failpoint }): Promise<void>;
  writeJournal(input: DriveRef & { readonly record: Omit<PendingRecord, 'status'> | Omit<DoneRecord, 'status'> }): Promise<void>;
  /** Drops the command's pending record (a poison message given up). */
  forgetCommand(input: DriveRef & { readonly commandId: string }): Promise<void>;
  prepareVolume(input: DriveRef & { readonly media: Media }): Promise<PreparedVolume>;
  updateDevice(input: DriveRef & { readonly source: DriveSource | null }): Promise<void>;
  /** `in-use` without touching storage while another drive claims the volume (CONTRACT §5 v1.1) */
  teardownVolume(input: DriveRef & { readonly media: Media; readonly failpoint?: Failpoint }): Promise<TeardownResult>;
}

export interface ActivityDeps {
  readonly hypervisor: HypervisorPort;
  readonly storage: StoragePort;
  readonly failpoints?: Failpoints;
  /** shared by everything that rewrites a domain's metadata in this process */
  readonly metadataLocks?: KeyedMutex;
  /** volumes other drives have in an unfinished change: never torn down from under them */
  readonly claims?: VolumeClaims;
  /** commands the broker may still redeliver: their journal records are never evicted */
  readonly unacked?: UnackedCommands;
}

export function createActivities(deps: ActivityDeps): Activities {
  const { hypervisor, storage } = deps;
  const fp = deps.failpoints ?? NO_FAILPOINTS;
  const locks = deps.metadataLocks ?? new KeyedMutex();
  const claims = deps.claims ?? new VolumeClaims();
  const unacked = deps.unacked;
  const pinned = unacked === undefined ? undefined : (commandId: string): boolean => unacked.has(commandId);
  /** Tear down unless another drive has the volume in an unfinished change. */
  const teardown = (media: Media, ref: DriveRef): Promise<TeardownResult> =>
    claims.claimedByOthers(media, driveKey(ref.vmId, ref.drive)) ? Promise.resolve('in-use') : storage.teardownVolume(media);
  // Sized for reading back within a flow and for a host's VMs, not for every drive ever
  // seen: an entry that lives long enough reaches V8's old generation and dies there, and
  // that churn set the worker's peak RSS (bench item 4: 176 → 141 MB with 1,024 → 256/64 entries).
  const mdCache = new DocumentCache<VmMetadata>((xml) => parseMetadata(xml), 256);
  // Journal documents are larger and cheap to parse again (a regex over the records).
  const journalCache = new DocumentCache<Journal>((xml) => Journal.parse(xml), 64);

  async function readMetadata(vmId: string): Promise<VmMetadata> {
    return mdCache.get(vmId, await hypervisor.getMetadata(vmId, OVIRT_VM_NS));
  }

  /**
   * Serialised read-modify-write of one namespace of one domain; skips no-op writes.
   * `ours`: nobody else writes this namespace, so the document this process last read or
   * wrote (under the same lock) is current and is not read again.
   */
  async function rewrite<T extends { toXml(): string }>(vmId: string, ns: MetadataNamespace, cache: DocumentCache<T>, edit: (doc: T) => T, ours = false): Promise<void> {
    await locks.run(`${vmId.toLowerCase()}|${ns.uri}`, async () => {
      const before = (ours ? cache.peek(vmId) : undefined) ?? cache.get(vmId, await hypervisor.getMetadata(vmId, ns));
      const after = edit(before);
      if (after === before) return;
      const xml = after.toXml();
      await hypervisor.setMetadata(vmId, ns, xml);
      cache.put(vmId, xml, after);
    });
  }

  function applyEdits(md: VmMetadata, drive: string, edits: readonly MetadataEdit[]): VmMetadata {
    return edits.reduce((acc, e) => {
      switch (e.op) {
        case 'add':
          return acc.addEntry(drive, e.pdiv, e.state);
        case 'mark':
          return acc.markEntry(drive, e.pdiv, e.state);
        case 'clear-state':
          return acc.clearState(drive, e.state);
        case 'remove':
          return acc.removeEntry(drive, e.state);
      }
      return acc;
    }, md);
  }

  async function inspect({ vmId, drive, commandId }: DriveRef & { commandId: string | null }): Promise<Inspection> {
    const [source, md, journalXml] = await Promise.all([
      hypervisor.readDrive(vmId, drive),
      readMetadata(vmId),
      commandId === null ? Promise.resolve(null) : hypervisor.getMetadata(vmId, JOURNAL_NS),
    ]);
    const metadata = md.drive(drive);
    const record = commandId === null ? undefined : journalCache.get(vmId, journalXml).find(drive, commandId);
    const pending = metadata.change !== null || metadata.entries.some((e) => e.state !== null);
    return { source, metadata, current: currentMedia(source, metadata), record, pending };
  }

  async function recover({ vmId, drive }: DriveRef): Promise<RecoveryReport> {
    const [source, md] = await Promise.all([hypervisor.readDrive(vmId, drive), readMetadata(vmId)]);
    const metadata = md.drive(drive);
    const volumes = volumesToCheck(metadata);
    const active = new Set<string>();
    await Promise.all(
      volumes.map(async (p) => {
        if ((await storage.volumeActivation(p)) === 'active') active.add(p.volumeID.toLowerCase());
      }),
    );
    const decision = decideRecovery({ metadata, source, isActive: (p) => active.has(p.volumeID.toLowerCase()) });
    const warnings: WarningInfo[] = [];
    const edits: ((md: VmMetadata) => VmMetadata)[] = [];
    for (const step of decision.steps) {
      switch (step.kind) {
        case 'teardown': {
          const res = await teardown(step.pdiv, { vmId, drive }).catch((err: unknown) => {
            const e = toCdromError(err);
            // Outcome unknown (a timeout, a lost connection): the metadata keeps naming the
            // volume and the whole recovery is retried, rather than leaving an orphan that
            // only the next background pass would find.
            if (e.retryable) throw e;
            warnings.push({ code: 'TEARDOWN_FAILED', message: e.message });
            return 'failed' as const;
          });
          if (res === 'in-use') warnings.push({ code: 'VOLUME_IN_USE', message: `volume ${step.pdiv.volumeID} is in use elsewhere; left active` });
          break;
        }
        case 'clear-state':
          edits.push((md) => md.clearState(drive, step.state));
          break;
        case 'remove-entry':
          edits.push((md) => md.removeEntry(drive, step.state));
          break;
        case 'commit-change':
          edits.push((md) => md.commitChange(drive));
          break;
        case 'discard-change':
          edits.push((md) => md.discardChange(drive));
          break;
      }
    }
    if (edits.length > 0) await rewrite(vmId, OVIRT_VM_NS, mdCache, (md) => edits.reduce((acc, e) => e(acc), md));
    return { row: decision.row, steps: decision.steps.length, warnings };
  }

  return {
    inspect,
    recover,

    async editMetadata({ vmId, drive, edits, failpoint }) {
      if (failpoint !== undefined) fp.before(failpoint, vmId);
      if (edits.length > 0) await rewrite(vmId, OVIRT_VM_NS, mdCache, (md) => applyEdits(md, drive, edits));
      if (failpoint !== undefined) fp.after(failpoint, vmId);
    },

    async writeJournal({ vmId, record }) {
      const failpoint = 'result' in record ? 'journal-done' : 'journal-pending';
      fp.before(failpoint, vmId);
      // The journal namespace is this worker's own: inspect() has just read it, or we wrote it.
      await rewrite(vmId, JOURNAL_NS, journalCache, (journal) => ('result' in record ? journal.withDone(record, pinned) : journal.withPending(record)), true);
      fp.after(failpoint, vmId);
    },

    async forgetCommand({ vmId, drive, commandId }) {
      await rewrite(vmId, JOURNAL_NS, journalCache, (journal) => journal.withoutPending(drive, commandId), true);
    },

    async prepareVolume({ vmId, media }) {
      fp.before('prepare', vmId);
      const prepared = await storage.prepareVolume(media);
      fp.after('prepare', vmId);
      return prepared;
    },

    async updateDevice({ vmId, drive, source }) {
      fp.before('libvirt-update', vmId);
      await hypervisor.updateDevice(vmId, drive, source);
      fp.after('libvirt-update', vmId);
    },

    async teardownVolume({ vmId, drive, media, failpoint }) {
      if (failpoint !== undefined) fp.before(failpoint, vmId);
      const res = await teardown(media, { vmId, drive });
      if (failpoint !== undefined) fp.after(failpoint, vmId);
      return res;
    },
  };
}

/**
 * The last document seen per domain, so that reading back what we just wrote (or what
 * did not change) costs a string comparison instead of a parse. Bounded, oldest first out.
 */
class DocumentCache<T> {
  private readonly docs = new Map<string, { xml: string | null; doc: T }>();

  constructor(
    private readonly parse: (xml: string | null) => T,
    private readonly max: number,
  ) {}

  get(vmId: string, xml: string | null): T {
    const key = vmId.toLowerCase();
    const hit = this.docs.get(key);
    if (hit !== undefined && hit.xml === xml) return hit.doc;
    const doc = this.parse(xml);
    this.put(vmId, xml, doc);
    return doc;
  }

  /** The last document seen for the domain, if still cached. */
  peek(vmId: string): T | undefined {
    return this.docs.get(vmId.toLowerCase())?.doc;
  }

  put(vmId: string, xml: string | null, doc: T): void {
    const key = vmId.toLowerCase();
    this.docs.delete(key);
    this.docs.set(key, { xml, doc });
    if (this.docs.size > this.max) this.docs.delete(this.docs.keys().next().value as string);
  }
}

function parseMetadata(xml: string | null): VmMetadata {
  try {
    return VmMetadata.parse(xml);
  } catch (err) {
    throw new CdromError('INTERNAL', (err as Error).message, { cause: err });
  }
}

/**
 * What the drive holds, in the command's media form: the PDIV the metadata names for the
 * drive's source, else the bare path (a legacy ISO, or a source the metadata lost).
 */
export function currentMedia(source: DriveSource | null, metadata: DriveMetadata): Media | null {
  if (source === null) return null;
  const named = [...metadata.entries.map((e) => e.pdiv), metadata.change?.pdiv ?? null].find((p) => p !== null && sourceHolds(source, p));
  return named ?? { path: source.path };
}

export function pdivOrNull(m: Media | null): Pdiv | null {
  return isPdiv(m) ? m : null;
}
