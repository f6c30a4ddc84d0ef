import { loadVirt, type NativeConnection } from '../../src/infra/libvirt/virt.native.js';
import { LIBVIRT_URI } from './vm.js';

/**
 * The media changes a VM actually saw, counted from libvirt's `tray-change` events on
 * a connection of the test's own (the project's binding, `registerDomainEvents`). Every
 * change through `updateDeviceFlags` — load, change and eject alike — opens the tray and
 * closes it again (measured here: one OPEN then one CLOSE per change, none for a change
 * to the media already in the drive), so the opens are the changes. A command redone
 * after a crash or a redelivery shows up as one more open, even when the end state is
 * the same. Only the VMs named to `watch` are counted. Free of vitest, for the scripts too.
 */
export class TrayWatch {
  private readonly opens = new Map<string, number>();
  /** every movement, in order, until `take` */
  private readonly moves = new Map<string, ('open' | 'close')[]>();
  private lastEventAt = 0;

  private constructor(
    private readonly conn: NativeConnection,
    private readonly watched: Set<string>,
  ) {}

  static async open(vmIds: readonly string[], uri = LIBVIRT_URI): Promise<TrayWatch> {
    const virt = loadVirt();
    const open = virt.constants.VIR_DOMAIN_EVENT_TRAY_CHANGE_OPEN;
    const watched = new Set(vmIds.map((v) => v.toLowerCase()));
    let self: TrayWatch | null = null;
    const conn = await virt.open(
      uri,
      (e) => {
        if (self === null || e.kind !== 'tray-change' || !watched.has(e.uuid.toLowerCase())) return;
        const key = e.uuid.toLowerCase();
        self.lastEventAt = Date.now();
        if (e.reason === open) self.opens.set(key, (self.opens.get(key) ?? 0) + 1);
        self.moves.set(key, [...(self.moves.get(key) ?? []), e.reason === open ? 'open' : 'close']);
      },
      0,
      0,
    );
    self = new TrayWatch(conn, watched);
    await conn.registerDomainEvents();
    return self;
  }

  watch(vmId: string): void {
    this.watched.add(vmId.toLowerCase());
  }

  /** The tray movements of `vmId` since the last `take`, in order; forgets them. */
  take(vmId: string): ('open' | 'close')[] {
    const key = vmId.toLowerCase();
    const list = this.moves.get(key) ?? [];
    this.moves.delete(key);
    return list;
  }

  /** Media changes of `vmId` seen so far (tray opens). */
  changes(vmId: string): number {
    return this.opens.get(vmId.toLowerCase()) ?? 0;
  }

  /**
   * Resolves once no tray event arrived for `quietMs` (events come asynchronously, a few
   * ms after the change): call it before reading a count that must include every change made so far.
   */
  async settle(quietMs = 400, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    const started = Date.now();
    for (;;) {
      const quietSince = Math.max(this.lastEventAt, started);
      const left = quietSince + quietMs - Date.now();
      if (left <= 0) return;
      if (Date.now() > deadline) throw new Error(`tray events still arriving after ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, Math.min(left, 100)));
    }
  }

  /** Runs `fn` and returns the media changes `vmId` saw during it, once the events have settled. */
  async count(vmId: string, fn: () => Promise<void>): Promise<number> {
    await this.settle();
    const before = this.changes(vmId);
    await fn();
    await this.settle();
    return this.changes(vmId) - before;
  }

  async close(): Promise<void> {
    await this.conn.deregisterDomainEvents().catch(() => undefined);
    await this.conn.close();
  }
}
