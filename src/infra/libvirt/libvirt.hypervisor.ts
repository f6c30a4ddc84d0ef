import { CdromError, isCdromError } from '../../domain/errors.js';
import type { DomainEvent, DomainRef, DriveSource, HypervisorPort, MetadataNamespace } from '../../domain/ports.js';
import type { Logger } from '../logging.js';
import { silentLogger } from '../logging.js';
import { aliasOf, buildCdromDiskXml, cdromDisks, findCdromDisk, sourceOf, trayOpen, type CdromDisk } from './cdrom-disk.xml.js';
import { DomainCache, invalidate, sameState, type CachedDomain, type DomainState } from './domain.cache.js';
import { classifyLibvirtError, isConnectionError, libvirtCode, type LibvirtOperation } from './libvirt.errors.js';
import { fromLibvirtMetadata, toLibvirtMetadata } from './metadata-ns.xml.js';
import { loadVirt, type NativeConnection, type NativeDomain, type NativeEvent, type VirtBinding } from './virt.native.js';

export interface LibvirtHypervisorOptions {
  /** e.g. `qemu:///system` (CDROM_LIBVIRT_URI) */
  readonly uri: string;
  readonly logger?: Logger;
  /** libvirt keepalive: a dead daemon is noticed after interval × (count + 1) seconds. */
  readonly keepAliveIntervalSec?: number;
  readonly keepAliveCount?: number;
  /** Delay before reconnecting after the connection dropped (doubles up to 10 s). */
  readonly reconnectDelayMs?: number;
  /** For tests: another build of the addon. */
  readonly binding?: VirtBinding;
}

interface Live {
  readonly conn: NativeConnection;
  readonly generation: number;
  readonly domains: DomainCache;
  /** Domain events are registered on this connection, so a cached domain state can be kept. */
  readonly events: boolean;
}

/** A domain state to write with, and whether it came from the cache (it may be stale). */
interface StateRead {
  readonly state: DomainState;
  readonly cached: boolean;
}

const MAX_CACHED_DOMAINS = 512;

/**
 * HypervisorPort on libvirt through the project's own addon. One connection, reopened
 * when it drops (close callback or a connection error on a call); domain events are
 * registered on every new connection, for the listeners and for the domain cache (a
 * lifecycle event forgets the domain's cached state). Errors are classified here, once,
 * into CdromError.
 */
export class LibvirtHypervisor implements HypervisorPort {
  private readonly virt: VirtBinding;
  private readonly log: Logger;
  private live: Promise<Live> | null = null;
  /** The connection `live` resolved to, for what must happen synchronously with an event. */
  private opened: Live | null = null;
  private generation = 0;
  private closed = false;
  private readonly listeners = new Set<(e: DomainEvent) => void>();
  private reconnectTimer: NodeJS.Timeout | null = null;
  private reconnectDelay: number;
  /** Events are emitted in libvirt's order even though mapping one may need a lookup. */
  private eventChain: Promise<void> = Promise.resolve();
  /** alias → target dev per domain, for tray events (libvirt names the device by alias). */
  private readonly aliases = new Map<string, Map<string, string>>();

  constructor(private readonly options: LibvirtHypervisorOptions) {
    this.virt = options.binding ?? loadVirt();
    this.log = (options.logger ?? silentLogger()).child({ component: 'libvirt' });
    this.reconnectDelay = options.reconnectDelayMs ?? 500;
  }

  /** Constructs the adapter and waits for its first connection. */
  static async open(options: LibvirtHypervisorOptions): Promise<LibvirtHypervisor> {
    const h = new LibvirtHypervisor(options);
    await h.connection();
    return h;
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.reconnectTimer !== null) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const live = this.live;
    this.live = null;
    this.opened = null;
    this.listeners.clear();
    if (live === null) return;
    try {
      await (await live).conn.close();
    } catch {
      // Closing a connection that never opened or already died has nothing to undo.
    }
  }

  async readDrive(vmId: string, drive: string): Promise<DriveSource | null> {
    const { dom } = await this.domain(vmId);
    const disk = await this.disk(dom, vmId, drive);
    return this.trueSource(dom, drive, disk);
  }

  async listCdroms(vmId: string): Promise<string[]> {
    const { dom } = await this.domain(vmId);
    const xml = await this.call('read', `XMLDesc of ${vmId}`, () => dom.xmlDesc(0), vmId);
    return cdromDisks(xml).map((d) => d.drive);
  }

  /**
   * Every CD-ROM of the domain with what it holds now (as readDrive reads it), from one
   * read of the domain XML instead of one for the list and one per drive.
   */
  async readDrives(vmId: string): Promise<Map<string, DriveSource | null>> {
    const { dom } = await this.domain(vmId);
    const xml = await this.call('read', `XMLDesc of ${vmId}`, () => dom.xmlDesc(0), vmId);
    const drives = new Map<string, DriveSource | null>();
    for (const disk of cdromDisks(xml)) drives.set(disk.drive, await this.trueSource(dom, disk.drive, disk));
    return drives;
  }

  async updateDevice(vmId: string, drive: string, source: DriveSource | null): Promise<void> {
    const { live, entry } = await this.domainEntry(vmId);
    await this.changeMedium(live, entry, vmId, drive, source, await this.state(live, entry, vmId));
  }

  async getMetadata(vmId: string, ns: MetadataNamespace): Promise<string | null> {
    const { dom } = await this.domain(vmId);
    const k = this.virt.constants;
    // AFFECT_CURRENT (0): the live definition of a running domain, else the persistent one;
    // no state round trip needed (reads are on every command's path).
    const flags = k.VIR_DOMAIN_AFFECT_CURRENT;
    let raw: string;
    try {
      raw = await this.call('metadata', `metadata ${ns.uri} of ${vmId}`, () => dom.getMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, ns.uri, flags), vmId);
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
    const { live, entry } = await this.domainEntry(vmId);
    const k = this.virt.constants;
    const write = (s: StateRead): Promise<void> =>
      this.call(
        'metadata',
        `${body === null ? 'remove' : 'write'} metadata ${ns.uri} of ${vmId}`,
        () => entry.dom.setMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, body, body === null ? null : ns.prefix, ns.uri, this.affect(s.state)),
        vmId,
      );
    const used = await this.state(live, entry, vmId);
    try {
      await write(used);
    } catch (err) {
      const again = await this.restateAfterFailure(live, entry, vmId, used, err);
      if (again === null) throw err;
      await write(again);
    }
  }

  async listDomains(): Promise<DomainRef[]> {
    const live = await this.connection();
    const all = await this.call('list', 'list domains', () => live.conn.listAllDomains(0));
    return all.map((d) => ({ vmId: d.uuid, name: d.name, active: d.active }));
  }

  onEvent(listener: (event: DomainEvent) => void): () => void {
    this.listeners.add(listener);
    // Events are registered with every connection (the domain cache needs them); the first
    // listener only makes sure there is one, and that it is kept up.
    if (this.listeners.size === 1) void this.subscribe();
    return () => {
      this.listeners.delete(listener);
    };
  }

  // ---- changing the medium -----------------------------------------------------------

  private async changeMedium(live: Live, entry: CachedDomain, vmId: string, drive: string, source: DriveSource | null, used: StateRead): Promise<void> {
    const { dom } = entry;
    const disk = await this.disk(dom, vmId, drive);
    const before = sourceOf(disk.element);
    const k = this.virt.constants;
    // Eject even when the guest has locked the tray: the engine's eject is authoritative.
    const flags = this.affect(used.state) | (source === null ? k.VIR_DOMAIN_DEVICE_MODIFY_FORCE : 0);
    const xml = buildCdromDiskXml(disk.element, source);
    const what = `change ${vmId}/${drive} to ${source === null ? 'empty' : source.path}`;
    try {
      await this.call('update', what, () => dom.updateDeviceFlags(xml, flags), vmId);
    } catch (err) {
      // Made for a state the domain is no longer in: refused before anything changed, so
      // read the disk again (an inactive domain shows its persistent one) and write again.
      const again = await this.restateAfterFailure(live, entry, vmId, used, err);
      if (again !== null) return this.changeMedium(live, entry, vmId, drive, source, again);
      if (!isCdromError(err) || err.retryable || !used.state[0]) throw err;
      throw await this.afterRefusedChange(dom, vmId, drive, before, err);
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
  private async afterRefusedChange(dom: NativeDomain, vmId: string, drive: string, before: DriveSource | null, err: CdromError): Promise<CdromError> {
    const k = this.virt.constants;
    const fail = (note: string): CdromError => new CdromError('CHANGE_FAILED', `${err.message}; ${note}`, { cause: err.cause });
    try {
      const disk = await this.disk(dom, vmId, drive);
      const shown = sourceOf(disk.element);
      if (!(trayOpen(disk.element) && shown !== null)) {
        return fail(`the drive still holds ${describe(shown)}`);
      }
      this.log.warn({ vmId, drive, shown: shown.path }, 'QEMU dropped the medium during a refused change; reconciling');
      const ejectXml = buildCdromDiskXml(disk.element, null);
      await this.call('update', `reconcile-eject ${vmId}/${drive}`, () => dom.updateDeviceFlags(ejectXml, k.VIR_DOMAIN_AFFECT_LIVE | k.VIR_DOMAIN_DEVICE_MODIFY_FORCE), vmId);
      if (before === null) return fail('the drive is empty');
      const emptied = await this.disk(dom, vmId, drive);
      const restoreXml = buildCdromDiskXml(emptied.element, before);
      try {
        await this.call('update', `reconcile-restore ${vmId}/${drive}`, () => dom.updateDeviceFlags(restoreXml, k.VIR_DOMAIN_AFFECT_LIVE), vmId);
      } catch (restoreErr) {
        return fail(`QEMU had dropped the old medium and restoring ${before.path} failed (${String(restoreErr)}): the drive is now empty`);
      }
      const now = await this.readDrive(vmId, drive);
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
   * or an error — and report the drive empty in that case.
   */
  private async trueSource(dom: NativeDomain, drive: string, disk: CdromDisk): Promise<DriveSource | null> {
    const shown = sourceOf(disk.element);
    if (shown === null || !trayOpen(disk.element)) return shown;
    try {
      const info = await dom.getBlockInfo(drive);
      return info.capacity > 0 ? shown : null;
    } catch (err) {
      if (isConnectionError(err, this.virt.constants)) throw classifyLibvirtError(err, 'read', this.virt.constants, `block info of ${drive}`);
      return null;
    }
  }

  // ---- plumbing ----------------------------------------------------------------------

  private async disk(dom: NativeDomain, vmId: string, drive: string): Promise<CdromDisk> {
    const xml = await this.call('read', `XMLDesc of ${vmId}`, () => dom.xmlDesc(0), vmId);
    const disk = findCdromDisk(xml, drive);
    if (disk === null) throw new CdromError('DRIVE_NOT_FOUND', `VM ${vmId} has no CD-ROM ${drive}`);
    return disk;
  }

  // ---- which definitions a write reaches ---------------------------------------------

  /** Live (and config when persistent) for a running domain, else its persistent config. */
  private affect([active, persistent]: DomainState): number {
    const k = this.virt.constants;
    return active ? k.VIR_DOMAIN_AFFECT_LIVE | (persistent ? k.VIR_DOMAIN_AFFECT_CONFIG : 0) : k.VIR_DOMAIN_AFFECT_CONFIG;
  }

  /**
   * The domain's `[active, persistent]`, from the cache when a lifecycle event has not
   * invalidated it since it was read. Only a running domain's state is kept. A stale
   * "running" (or "persistent") is safe: libvirt refuses the write before changing
   * anything (VIR_ERR_OPERATION_INVALID), and restateAfterFailure reads again and writes
   * again. A stale "not running" would not be refused: the write would silently go to the
   * persistent definition only, so that state is read every time. A transient domain
   * defined while running is covered by its "defined" event alone.
   */
  private async state(live: Live, entry: CachedDomain, vmId: string): Promise<StateRead> {
    if (entry.state !== null) return { state: entry.state, cached: true };
    const version = entry.version;
    const [active, persistent] = await this.call('read', `state of ${vmId}`, () => Promise.all([entry.dom.isActive(), entry.dom.isPersistent()]), vmId);
    const state: DomainState = [active, persistent];
    // An event that arrived while we read may describe a change our answer predates.
    if (live.events && active && entry.version === version) entry.state = state;
    return { state, cached: false };
  }

  /**
   * A write made with a cached state failed: the state is forgotten. When libvirt refused
   * it for that state (OPERATION_INVALID: "domain is not running", "transient domains do
   * not have any persistent config" — checked before anything is changed) and the state
   * read now differs, returns the new state to write once more with. Otherwise null: the
   * error stands, as it would have with a fresh state.
   */
  private async restateAfterFailure(live: Live, entry: CachedDomain, vmId: string, used: StateRead, err: unknown): Promise<StateRead | null> {
    if (!used.cached) return null;
    invalidate(entry);
    if (!isCdromError(err) || libvirtCode(err.cause) !== this.virt.constants.VIR_ERR_OPERATION_INVALID) return null;
    let now: StateRead;
    try {
      now = await this.state(live, entry, vmId);
    } catch {
      return null;
    }
    if (sameState(now.state, used.state)) return null;
    this.log.info({ vmId, was: used.state, now: now.state }, 'domain state changed under a write; writing again');
    // never cached: a second refusal is final
    return { state: now.state, cached: false };
  }

  private async domain(vmId: string): Promise<CachedDomain> {
    return (await this.domainEntry(vmId)).entry;
  }

  private async domainEntry(vmId: string): Promise<{ live: Live; entry: CachedDomain }> {
    const live = await this.connection();
    const cached = live.domains.get(vmId);
    if (cached !== undefined) return { live, entry: cached };
    const dom = await this.call('lookup', `domain ${vmId}`, () => live.conn.lookupByUUIDString(vmId.toLowerCase()));
    // a concurrent lookup may have won: one entry per domain, so events reach every user
    return { live, entry: live.domains.get(vmId) ?? live.domains.add(vmId, dom) };
  }

  /** Runs one libvirt call and classifies its failure; a dead connection is dropped. */
  private async call<T>(op: LibvirtOperation, context: string, fn: () => Promise<T>, vmId?: string): Promise<T> {
    const live = this.live;
    try {
      return await fn();
    } catch (err) {
      const k = this.virt.constants;
      if (isConnectionError(err, k) && live !== null) this.dropConnection(live, 'call failed');
      if (vmId !== undefined && libvirtCode(err) === k.VIR_ERR_NO_DOMAIN) this.opened?.domains.forget(vmId);
      throw classifyLibvirtError(err, op, k, context);
    }
  }

  private connection(): Promise<Live> {
    if (this.closed) return Promise.reject(new CdromError('INTERNAL', 'hypervisor adapter is closed'));
    if (this.live === null) {
      const generation = ++this.generation;
      const opening = this.openConnection(generation);
      this.live = opening;
      opening.catch(() => {
        if (this.live === opening) this.live = null;
      });
    }
    return this.live;
  }

  private async openConnection(generation: number): Promise<Live> {
    const { uri } = this.options;
    let conn: NativeConnection;
    try {
      conn = await this.virt.open(uri, (e) => this.onNative(generation, e), this.options.keepAliveIntervalSec ?? 5, this.options.keepAliveCount ?? 3);
    } catch (err) {
      this.scheduleReconnect();
      throw new CdromError('INTERNAL', `cannot connect to ${uri}: ${err instanceof Error ? err.message : String(err)}`, { retryable: true, cause: err });
    }
    this.reconnectDelay = this.options.reconnectDelayMs ?? 500;
    this.log.info({ uri, generation }, 'connected to libvirt');
    // Before any call is made on it: the domain cache may keep a state only while events
    // can invalidate it.
    let events = true;
    try {
      await conn.registerDomainEvents();
    } catch (err) {
      events = false;
      this.log.error({ err }, 'cannot register domain events; domain states are read before every write');
    }
    const live: Live = { conn, generation, domains: new DomainCache(MAX_CACHED_DOMAINS), events };
    if (generation === this.generation && !this.closed) this.opened = live;
    return live;
  }

  private dropConnection(live: Promise<Live>, why: string): void {
    if (this.live !== live) return;
    this.live = null;
    this.opened = null;
    this.aliases.clear();
    this.log.warn({ why }, 'libvirt connection lost');
    live.then((l) => l.conn.close()).catch(() => undefined);
    this.scheduleReconnect();
  }

  /** Only needed for events: calls reconnect on demand anyway. */
  private scheduleReconnect(): void {
    if (this.closed || this.listeners.size === 0 || this.reconnectTimer !== null) return;
    const delay = this.reconnectDelay;
    this.reconnectDelay = Math.min(delay * 2, 10_000);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.live === null && !this.closed) this.connection().catch(() => undefined);
    }, delay);
    this.reconnectTimer.unref();
  }

  private async subscribe(): Promise<void> {
    try {
      const live = await this.connection();
      // A connection whose registration failed gets another try for the listeners (its
      // domain cache stays off: it may have missed events).
      if (!live.events) await live.conn.registerDomainEvents();
    } catch (err) {
      this.log.error({ err }, 'cannot register domain events');
    }
  }

  private onNative(generation: number, e: NativeEvent): void {
    if (generation !== this.generation) return;
    const k = this.virt.constants;
    if (e.kind === 'close') {
      if (e.event !== k.VIR_CONNECT_CLOSE_REASON_CLIENT && this.live !== null) this.dropConnection(this.live, `closed by libvirt (reason ${e.event})`);
      return;
    }
    // Any lifecycle event (started, stopped, defined, undefined, suspended, …) may change
    // what a write must reach: forget the state now, before the next write can use it.
    if (e.kind === 'lifecycle' && this.opened?.generation === generation) this.opened.domains.invalidate(e.uuid);
    if (this.listeners.size === 0) return;
    this.eventChain = this.eventChain.then(async () => {
      const mapped = await this.mapEvent(e);
      if (mapped !== null) for (const l of [...this.listeners]) l(mapped);
    }).catch((err: unknown) => this.log.error({ err }, 'domain event listener failed'));
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
      const { dom } = await this.domain(uuid);
      const xml = await dom.xmlDesc(0);
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
