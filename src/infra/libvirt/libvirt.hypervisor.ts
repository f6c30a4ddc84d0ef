import { CdromError, isCdromError } from '../../domain/errors.js';
import type { Logger } from '../../domain/logger.js';
import type { DomainEvent, DomainRef, DriveSource, HypervisorPort, MetadataNamespace } from '../../domain/ports.js';
import { silentLogger } from '../logging.js';
import { aliasOf, buildCdromDiskXml, cdromDisks, sourceOf, trayOpen, type CdromDisk } from './cdrom-disk.xml.js';
import { parseXml } from '../../domain/metadata/xml-tree.js';
import { ConnectionPool, type CallMode, type Lease } from './connection.pool.js';
import { DomainStates, sameState, type DomainState } from './domain.cache.js';
import { DomainDocs } from './domain-docs.js';
import { EventsLink } from './events.link.js';
import { classifyLibvirtError, isConnectionError, libvirtCode, type LibvirtOperation } from './libvirt.errors.js';
import { fromLibvirtMetadata, toLibvirtMetadata } from './metadata-ns.xml.js';
import { loadVirt, type NativeDomain, type NativeEvent, type VirtBinding } from './virt.native.js';

export interface LibvirtHypervisorOptions {
  /** e.g. `qemu:///system` (CDROM_LIBVIRT_URI) */
  readonly uri: string;
  readonly logger?: Logger;
  /** libvirt keepalive: a dead daemon is noticed after interval × (count + 1) seconds. */
  readonly keepAliveIntervalSec?: number;
  readonly keepAliveCount?: number;
  /** Delay before reopening the events connection after it dropped (doubles up to 2 s). */
  readonly reconnectDelayMs?: number;
  /** A call that has not returned by then is hung (CDROM_STEP_TIMEOUT_MS); default 60 s. */
  readonly callTimeoutMs?: number;
  /** Deadline of opening a connection; default the call timeout, at most 10 s. */
  readonly openTimeoutMs?: number;
  /** libvirtd's `max_client_requests` (default 5): calls at once on one connection. */
  readonly maxCallsPerConnection?: number;
  readonly maxConnections?: number;
  /** For tests: another build of the addon. */
  readonly binding?: VirtBinding;
}

/** A domain state to write with, and whether it came from the cache (it may be stale). */
interface StateRead {
  readonly state: DomainState;
  readonly cached: boolean;
}

const MAX_HANDLES_PER_CONNECTION = 512;

/**
 * HypervisorPort on libvirt through the project's own addon. Calls run on a pool of
 * connections (connection.pool.ts: a place per call within libvirtd's per-client limit,
 * a deadline per call, connections with a hung call retired); domain events come on a
 * connection of their own (events.link.ts). Errors are classified here, once, into
 * CdromError, and a connection error drops only the connection it happened on.
 *
 * A write whose connection broke may still land (libvirtd finishes a job whose client
 * is gone, and QEMU may still act on a command it was sent): such a write settles only
 * once the domain's job is known to be over (`untilLanded`), so whatever waits on it
 * knows that nothing of it is still to come.
 */
export class LibvirtHypervisor implements HypervisorPort {
  private readonly virt: VirtBinding;
  private readonly log: Logger;
  private readonly pool: ConnectionPool;
  private readonly events: EventsLink;
  /** [active, persistent] per running domain, kept while the events link is up */
  private readonly states = new DomainStates(MAX_HANDLES_PER_CONNECTION);
  /** metadata and CD-ROM disks as last read or written, kept while events can correct them, of domains known to be running */
  private readonly docs = new DomainDocs(4 * MAX_HANDLES_PER_CONNECTION, (vmId) => this.states.get(vmId)?.[0] === true);
  private closed = false;
  private readonly listeners = new Set<(e: DomainEvent) => void>();
  /** Events are emitted in libvirt's order even though mapping one may need a lookup. */
  private eventChain: Promise<void> = Promise.resolve();
  /** alias → target dev per domain, for tray events (libvirt names the device by alias). */
  private readonly aliases = new Map<string, Map<string, string>>();

  constructor(private readonly options: LibvirtHypervisorOptions) {
    this.virt = options.binding ?? loadVirt();
    this.log = (options.logger ?? silentLogger()).child({ component: 'libvirt' });
    const callTimeoutMs = options.callTimeoutMs ?? 60_000;
    const openTimeoutMs = options.openTimeoutMs ?? Math.min(callTimeoutMs, 10_000);
    const keepAliveIntervalSec = options.keepAliveIntervalSec ?? 5;
    const keepAliveCount = options.keepAliveCount ?? 3;
    this.pool = new ConnectionPool({
      open: () => this.virt.open(options.uri, () => undefined, keepAliveIntervalSec, keepAliveCount),
      log: this.log,
      callTimeoutMs,
      openTimeoutMs,
      ...(options.maxCallsPerConnection !== undefined ? { maxCallsPerConnection: options.maxCallsPerConnection } : {}),
      ...(options.maxConnections !== undefined ? { maxConnections: options.maxConnections } : {}),
    });
    this.events = new EventsLink({
      virt: this.virt,
      uri: options.uri,
      log: this.log,
      keepAliveIntervalSec,
      keepAliveCount,
      openTimeoutMs,
      reconnectDelayMs: options.reconnectDelayMs ?? 250,
      maxReconnectDelayMs: 2_000,
      onEvent: (e) => this.onNative(e),
      onDown: (why) => {
        // Events are missed from now on: nothing cached may be trusted, and every call
        // connection went to the same daemon.
        this.states.disable();
        this.docs.disable();
        this.aliases.clear();
        this.pool.dropAll(`events connection ${why}`);
      },
      onUp: (again) => {
        this.states.enable();
        this.docs.enable();
        if (again) this.emit({ kind: 'reconnected' });
      },
    });
  }

  /** Constructs the adapter and waits for its events connection. */
  static async open(options: LibvirtHypervisorOptions): Promise<LibvirtHypervisor> {
    const h = new LibvirtHypervisor(options);
    try {
      await h.events.start();
    } catch (err) {
      await h.close();
      throw new CdromError('INTERNAL', `cannot connect to ${options.uri}: ${err instanceof Error ? err.message : String(err)}`, { retryable: true, cause: err });
    }
    return h;
  }

  /** libvirt calls past their deadline that have not returned (`cdrom_hung_calls`). */
  get hungCalls(): number {
    return this.pool.hung;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.listeners.clear();
    await Promise.all([this.events.close(), this.pool.close()]);
  }

  async readDrive(vmId: string, drive: string): Promise<DriveSource | null> {
    return this.onDomain(vmId, async (lease, dom) => this.trueSource(lease, dom, vmId, drive, await this.disk(lease, dom, vmId, drive)));
  }

  async listCdroms(vmId: string): Promise<string[]> {
    const xml = await this.onDomain(vmId, (lease, dom) => this.domainXml(lease, dom, vmId));
    return cdromDisks(xml).map((d) => d.drive);
  }

  /**
   * Every CD-ROM of the domain with what it holds now (as readDrive reads it), from one
   * read of the domain XML instead of one for the list and one per drive.
   */
  async readDrives(vmId: string): Promise<Map<string, DriveSource | null>> {
    return this.onDomain(vmId, async (lease, dom) => {
      const version = this.docs.disksVersion(vmId);
      const disks = cdromDisks(await this.domainXml(lease, dom, vmId));
      this.docs.keepDisks(vmId, disks, version);
      const drives = new Map<string, DriveSource | null>();
      for (const disk of disks) drives.set(disk.drive, await this.trueSource(lease, dom, vmId, disk.drive, disk));
      return drives;
    });
  }

  async updateDevice(vmId: string, drive: string, source: DriveSource | null): Promise<void> {
    const token = this.docs.updating(vmId);
    let now: CdromDisk | undefined;
    try {
      now = await this.onDomain(vmId, async (lease, dom) => this.changeMedium(lease, dom, vmId, drive, source, await this.state(lease, dom, vmId)));
    } finally {
      this.docs.updated(vmId, token, drive, now);
    }
  }

  /** From what this adapter last read or wrote while events can tell it changed (DomainDocs). */
  async getMetadata(vmId: string, ns: MetadataNamespace): Promise<string | null> {
    const known = this.docs.metadataOf(vmId, ns.uri);
    if (known !== undefined) return known;
    const version = this.docs.metadataVersion(vmId, ns.uri);
    const xml = await this.readMetadata(vmId, ns);
    this.docs.keepMetadata(vmId, ns.uri, xml, version);
    return xml;
  }

  private async readMetadata(vmId: string, ns: MetadataNamespace): Promise<string | null> {
    const k = this.virt.constants;
    // AFFECT_CURRENT (0): the live definition of a running domain, else the persistent one;
    // no state round trip needed (reads are on every command's path).
    let raw: string;
    try {
      raw = await this.onDomain(vmId, (lease, dom) =>
        this.call(lease, 'metadata', `metadata ${ns.uri} of ${vmId}`, 'read', () => dom.getMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, ns.uri, k.VIR_DOMAIN_AFFECT_CURRENT), vmId),
      );
    } catch (err) {
      if (isCdromError(err) && libvirtCode(err.cause) === k.VIR_ERR_NO_DOMAIN_METADATA) return null;
      throw err;
    }
    return fromLibvirtMetadata(raw, ns);
  }

  async setMetadata(vmId: string, ns: MetadataNamespace, xml: string | null): Promise<void> {
    let body: string | null = null;
    try {
      body = xml === null ? null : toLibvirtMetadata(xml, ns);
    } catch (err) {
      throw new CdromError('INTERNAL', `metadata for ${ns.uri} is not usable: ${String(err)}`, { cause: err });
    }
    const k = this.virt.constants;
    const token = this.docs.writing(vmId, ns.uri);
    let written = false;
    try {
      await this.writeMetadata(vmId, ns, body, k);
      written = true;
    } finally {
      this.docs.wrote(vmId, ns.uri, token, written ? xml : undefined);
    }
  }

  private async writeMetadata(vmId: string, ns: MetadataNamespace, body: string | null, k: VirtBinding['constants']): Promise<void> {
    await this.onDomain(vmId, async (lease, dom) => {
      const write = (s: StateRead): Promise<void> =>
        this.call(
          lease,
          'metadata',
          `${body === null ? 'remove' : 'write'} metadata ${ns.uri} of ${vmId}`,
          'write',
          () => dom.setMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, body, body === null ? null : ns.prefix, ns.uri, this.affect(s.state)),
          vmId,
        );
      const used = await this.state(lease, dom, vmId);
      try {
        await write(used);
      } catch (err) {
        const again = await this.restateAfterFailure(lease, dom, vmId, used, err);
        if (again === null) throw err;
        await write(again);
      }
    });
  }

  async listDomains(): Promise<DomainRef[]> {
    const all = await this.pool.with(null, (lease) => this.call(lease, 'list', 'list domains', 'read', () => lease.c.conn.listAllDomains(0)));
    return all.map((d) => ({ vmId: d.uuid, name: d.name, active: d.active }));
  }

  onEvent(listener: (event: DomainEvent) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  // ---- changing the medium -----------------------------------------------------------

  /** Returns the drive's element as sent: what the drive holds now. */
  private async changeMedium(lease: Lease, dom: NativeDomain, vmId: string, drive: string, source: DriveSource | null, used: StateRead): Promise<CdromDisk> {
    const disk = await this.disk(lease, dom, vmId, drive, true);
    const before = sourceOf(disk.element);
    const k = this.virt.constants;
    // Eject even when the guest has locked the tray: the engine's eject is authoritative.
    const flags = this.affect(used.state) | (source === null ? k.VIR_DOMAIN_DEVICE_MODIFY_FORCE : 0);
    const xml = buildCdromDiskXml(disk.element, source);
    const what = `change ${vmId}/${drive} to ${source === null ? 'empty' : source.path}`;
    try {
      await this.call(lease, 'update', what, 'write', () => dom.updateDeviceFlags(xml, flags), vmId);
      return { drive, element: parseXml(xml) };
    } catch (err) {
      // Made for a state the domain is no longer in: refused before anything changed, so
      // read the disk again (an inactive domain shows its persistent one) and write again.
      const again = await this.restateAfterFailure(lease, dom, vmId, used, err);
      if (again !== null) return this.changeMedium(lease, dom, vmId, drive, source, again);
      if (!isCdromError(err) || err.retryable || !used.state[0]) throw err;
      throw await this.afterRefusedChange(lease, dom, vmId, drive, before, err);
    }
  }

  /**
   * QEMU can refuse a medium after libvirt has already opened the tray and removed the
   * old one (a directory as source: blockdev-add fails). libvirt then still shows the
   * old source, with `<target tray='open'/>`, while QEMU holds nothing. Re-read, and if
   * they diverged, make them agree again: force-eject (both empty), then put the old
   * medium back so the drive keeps what it had (the atomicity rule). The error reports
   * what the drive truly holds afterwards.
   */
  private async afterRefusedChange(lease: Lease, dom: NativeDomain, vmId: string, drive: string, before: DriveSource | null, err: CdromError): Promise<CdromError> {
    const k = this.virt.constants;
    const fail = (note: string): CdromError => new CdromError('CHANGE_FAILED', `${err.message}; ${note}`, { cause: err.cause });
    try {
      const disk = await this.disk(lease, dom, vmId, drive);
      const shown = sourceOf(disk.element);
      if (!(trayOpen(disk.element) && shown !== null)) {
        return fail(`the drive still holds ${describe(shown)}`);
      }
      this.log.warn({ vmId, drive, shown: shown.path }, 'QEMU dropped the medium during a refused change; reconciling');
      const ejectXml = buildCdromDiskXml(disk.element, null);
      await this.call(lease, 'update', `reconcile-eject ${vmId}/${drive}`, 'write', () => dom.updateDeviceFlags(ejectXml, k.VIR_DOMAIN_AFFECT_LIVE | k.VIR_DOMAIN_DEVICE_MODIFY_FORCE), vmId);
      if (before === null) return fail('the drive is empty');
      const emptied = await this.disk(lease, dom, vmId, drive);
      const restoreXml = buildCdromDiskXml(emptied.element, before);
      try {
        await this.call(lease, 'update', `reconcile-restore ${vmId}/${drive}`, 'write', () => dom.updateDeviceFlags(restoreXml, k.VIR_DOMAIN_AFFECT_LIVE), vmId);
      } catch (restoreErr) {
        return fail(`QEMU had dropped the old medium and restoring ${before.path} failed (${String(restoreErr)}): the drive is now empty`);
      }
      const now = await this.trueSource(lease, dom, vmId, drive, await this.disk(lease, dom, vmId, drive));
      return fail(`QEMU had dropped the old medium; restored, the drive holds ${describe(now)}`);
    } catch (reErr) {
      // We could not even find out: the outcome is unknown, so let the command retry.
      return new CdromError('CHANGE_FAILED', `${err.message}; the drive's state could not be re-read: ${String(reErr)}`, { retryable: true, cause: err.cause });
    }
  }

  /**
   * The drive's source as QEMU has it. libvirt's XML alone can lie after a refused
   * change (see afterRefusedChange): with the tray open and a source named, ask for the
   * block info, which comes from QEMU's block layer — no medium there means capacity 0
   * or an error from QEMU — and report the drive empty in that case. Not knowing (a
   * lost connection, a deadline, a job lock that timed out) is not "empty": it throws.
   */
  private async trueSource(lease: Lease, dom: NativeDomain, vmId: string, drive: string, disk: CdromDisk): Promise<DriveSource | null> {
    const shown = sourceOf(disk.element);
    if (shown === null || !trayOpen(disk.element)) return shown;
    try {
      const info = await this.call(lease, 'read', `block info of ${vmId}/${drive}`, 'read', () => dom.getBlockInfo(drive), vmId);
      return info.capacity > 0 ? shown : null;
    } catch (err) {
      if (isCdromError(err) && (err.retryable || err.code === 'VM_NOT_FOUND')) throw err;
      return null;
    }
  }

  // ---- plumbing ----------------------------------------------------------------------

  /** The live domain XML (the persistent one for a domain not running). */
  private domainXml(lease: Lease, dom: NativeDomain, vmId: string): Promise<string> {
    return this.call(lease, 'read', `XMLDesc of ${vmId}`, 'read', () => dom.xmlDesc(0), vmId);
  }

  /**
   * The drive's `<disk>`: as last read or sent when events say nothing changed it since
   * (`updating`: asked by an own update of the domain, which that update does not hide),
   * else read.
   */
  private async disk(lease: Lease, dom: NativeDomain, vmId: string, drive: string, updating = false): Promise<CdromDisk> {
    const known = this.docs.diskOf(vmId, drive, updating);
    if (known !== undefined) return known;
    const version = this.docs.disksVersion(vmId);
    const disks = cdromDisks(await this.domainXml(lease, dom, vmId));
    this.docs.keepDisks(vmId, disks, version);
    const disk = disks.find((d) => d.drive === drive);
    if (disk === undefined) throw new CdromError('DRIVE_NOT_FOUND', `VM ${vmId} has no CD-ROM ${drive}`);
    return disk;
  }

  /** Live (and config when persistent) for a running domain, else its persistent config. */
  private affect([active, persistent]: DomainState): number {
    const k = this.virt.constants;
    return active ? k.VIR_DOMAIN_AFFECT_LIVE | (persistent ? k.VIR_DOMAIN_AFFECT_CONFIG : 0) : k.VIR_DOMAIN_AFFECT_CONFIG;
  }

  /**
   * The domain's `[active, persistent]`, from the cache when a lifecycle event has not
   * invalidated it since it was read. Only a running domain's state is kept, and only
   * while the events link is up. A stale "running" (or "persistent") is safe: libvirt
   * refuses the write before changing anything (VIR_ERR_OPERATION_INVALID), and
   * restateAfterFailure reads again and writes again. A stale "not running" would not be
   * refused (the write would silently go to the persistent definition only), so that
   * state is read every time.
   */
  private async state(lease: Lease, dom: NativeDomain, vmId: string): Promise<StateRead> {
    const cached = this.states.get(vmId);
    if (cached !== null) return { state: cached, cached: true };
    const version = this.states.version(vmId);
    const [active, persistent] = await this.call(lease, 'read', `state of ${vmId}`, 'read', () => Promise.all([dom.isActive(), dom.isPersistent()]), vmId);
    const state: DomainState = [active, persistent];
    // An event that arrived while we read may describe a change our answer predates.
    if (active) this.states.keep(vmId, state, version);
    return { state, cached: false };
  }

  /**
   * A write made with a cached state failed: the state is forgotten. When libvirt refused
   * it for that state (OPERATION_INVALID: "domain is not running", "transient domains do
   * not have any persistent config" — checked before anything is changed) and the state
   * read now differs, returns the new state to write once more with. Otherwise null: the
   * error stands, as it would have with a fresh state.
   */
  private async restateAfterFailure(lease: Lease, dom: NativeDomain, vmId: string, used: StateRead, err: unknown): Promise<StateRead | null> {
    if (!used.cached) return null;
    this.states.invalidate(vmId);
    if (!isCdromError(err) || libvirtCode(err.cause) !== this.virt.constants.VIR_ERR_OPERATION_INVALID) return null;
    let now: StateRead;
    try {
      now = await this.state(lease, dom, vmId);
    } catch {
      return null;
    }
    if (sameState(now.state, used.state)) return null;
    this.log.info({ vmId, was: used.state, now: now.state }, 'domain state changed under a write; writing again');
    // never cached: a second refusal is final
    return { state: now.state, cached: false };
  }

  /** Runs `fn` on a pooled connection with the domain's handle on that connection. */
  private onDomain<T>(vmId: string, fn: (lease: Lease, dom: NativeDomain) => Promise<T>): Promise<T> {
    if (this.closed) return Promise.reject(new CdromError('INTERNAL', 'hypervisor adapter is closed'));
    return this.pool.with(vmId.toLowerCase(), async (lease) => fn(lease, await this.handle(lease, vmId)));
  }

  private async handle(lease: Lease, vmId: string): Promise<NativeDomain> {
    const key = vmId.toLowerCase();
    const known = lease.c.domains.get(key);
    if (known !== undefined) return known;
    const dom = await this.call(lease, 'lookup', `domain ${vmId}`, 'read', () => lease.c.conn.lookupByUUIDString(key), vmId);
    if (lease.c.domains.size >= MAX_HANDLES_PER_CONNECTION) lease.c.domains.clear();
    lease.c.domains.set(key, dom);
    return dom;
  }

  /**
   * One libvirt call on the lease's connection, with its deadline; its failure is
   * classified. A connection error drops that connection — the one the handle came from,
   * never a newer one. A write that met one settles once it can no longer land.
   */
  private async call<T>(lease: Lease, op: LibvirtOperation, context: string, mode: CallMode, fn: () => Promise<T>, vmId?: string): Promise<T> {
    try {
      return await this.pool.call(lease, context, mode, fn);
    } catch (err) {
      if (isCdromError(err)) throw err; // the pool's own TIMEOUT
      const k = this.virt.constants;
      const connectionLost = isConnectionError(err, k);
      if (connectionLost) this.pool.drop(lease.c, `${context}: ${err instanceof Error ? err.message : String(err)}`);
      if (vmId !== undefined && libvirtCode(err) === k.VIR_ERR_NO_DOMAIN) {
        lease.c.domains.delete(vmId.toLowerCase());
        this.states.invalidate(vmId);
        this.docs.forget(vmId);
      }
      if (connectionLost && mode === 'write' && vmId !== undefined) await this.untilLanded(vmId, context);
      throw classifyLibvirtError(err, op, k, context);
    }
  }

  /**
   * After a write lost its connection: waits until libvirtd answers again and the
   * domain has no job running (virDomainGetControlInfo: OK), so the write can no longer
   * land. Polls with backoff for as long as it takes; the caller's drive stays held.
   */
  private async untilLanded(vmId: string, context: string): Promise<void> {
    const k = this.virt.constants;
    const started = Date.now();
    this.log.warn({ vmId, call: context }, 'a write lost its connection; waiting until it can no longer land');
    for (let delay = 100; !this.closed; delay = Math.min(delay * 2, 1_000)) {
      try {
        // Only OK says no job is running (any client's); it is answered without taking
        // the domain's job, so it works while the job is still stuck.
        const over = await this.onDomain(vmId, async (lease, dom) => {
          const info = await this.call(lease, 'read', `control info of ${vmId}`, 'read', () => dom.getControlInfo(), vmId);
          return info.state === k.VIR_DOMAIN_CONTROL_OK;
        });
        if (over) {
          this.log.info({ vmId, call: context, waitedMs: Date.now() - started }, 'the lost write can no longer land');
          return;
        }
      } catch (err) {
        // gone, or not running any more (refused: OPERATION_INVALID): nothing can land
        if (isCdromError(err) && (err.code === 'VM_NOT_FOUND' || !err.retryable)) return;
      }
      await new Promise((r) => setTimeout(r, delay));
    }
  }

  private emit(event: DomainEvent): void {
    if (this.listeners.size === 0) return;
    for (const l of [...this.listeners]) l(event);
  }

  private onNative(e: Exclude<NativeEvent, { kind: 'close' }>): void {
    // Any lifecycle event (started, stopped, defined, undefined, suspended, …) may change
    // what a write must reach: forget the state now, before the next write can use it.
    if (e.kind === 'lifecycle') this.states.invalidate(e.uuid);
    this.docsSee(e);
    if (this.listeners.size === 0) return;
    this.eventChain = this.eventChain
      .then(async () => {
        const mapped = await this.mapEvent(e);
        if (mapped !== null) this.emit(mapped);
      })
      .catch((err: unknown) => this.log.error({ err }, 'domain event listener failed'));
  }

  /** What each event says about the documents kept in DomainDocs. */
  private docsSee(e: Exclude<NativeEvent, { kind: 'close' }>): void {
    switch (e.kind) {
      case 'lifecycle':
      case 'device-removed':
        this.docs.forget(e.uuid);
        return;
      case 'tray-change':
        this.docs.onTrayEvent(e.uuid);
        return;
      case 'metadata-change':
        // title and description are not element namespaces
        if (e.type === this.virt.constants.VIR_DOMAIN_METADATA_ELEMENT) this.docs.onMetadataEvent(e.uuid, e.nsUri);
        return;
    }
  }

  private async mapEvent(e: Exclude<NativeEvent, { kind: 'close' }>): Promise<DomainEvent | null> {
    const k = this.virt.constants;
    switch (e.kind) {
      case 'lifecycle': {
        this.aliases.delete(e.uuid);
        const event =
          e.event === k.VIR_DOMAIN_EVENT_STARTED ? 'started'
          : e.event === k.VIR_DOMAIN_EVENT_RESUMED ? 'resumed'
          : e.event === k.VIR_DOMAIN_EVENT_STOPPED ? 'stopped'
          : e.event === k.VIR_DOMAIN_EVENT_DEFINED ? 'defined'
          : e.event === k.VIR_DOMAIN_EVENT_UNDEFINED ? 'undefined'
          : 'other';
        return { kind: 'lifecycle', vmId: e.uuid, event };
      }
      case 'tray-change':
        return { kind: 'tray-change', vmId: e.uuid, device: await this.targetOfAlias(e.uuid, e.device), open: e.reason === k.VIR_DOMAIN_EVENT_TRAY_CHANGE_OPEN };
      case 'metadata-change':
        return { kind: 'metadata-change', vmId: e.uuid, nsUri: e.nsUri };
      case 'device-removed':
        return null;
    }
  }

  /** libvirt names the device by alias; the port by target dev. Falls back to the alias. */
  private async targetOfAlias(uuid: string, alias: string): Promise<string> {
    const known = this.aliases.get(uuid)?.get(alias);
    if (known !== undefined) return known;
    try {
      const xml = await this.onDomain(uuid, (lease, dom) => this.domainXml(lease, dom, uuid));
      const map = new Map<string, string>();
      for (const d of cdromDisks(xml)) {
        const name = aliasOf(d.element);
        if (name !== undefined) map.set(name, d.drive);
      }
      this.aliases.set(uuid, map);
      return map.get(alias) ?? alias;
    } catch {
      return alias;
    }
  }
}

function describe(source: DriveSource | null): string {
  return source === null ? 'no medium' : `${source.type} ${source.path}`;
}
