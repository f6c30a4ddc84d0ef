import { withDeadline } from '../deadline.js';
import type { Logger } from '../../domain/logger.js';
import type { NativeConnection, NativeEvent, VirtBinding } from './virt.native.js';

/**
 * The connection domain events arrive on. It makes no other calls, so no hung call can
 * hold it up. When it closes (libvirtd killed, restarted, or its keepalive lapsed) it is
 * reopened with backoff; `onDown` and `onUp` tell the adapter, because events were
 * missed in between: the domain state cache is off while it is down, and every domain
 * is reconciled after it is back (CONTRACT §9).
 */

export interface EventsLinkOptions {
  readonly virt: VirtBinding;
  readonly uri: string;
  readonly log: Logger;
  readonly keepAliveIntervalSec: number;
  readonly keepAliveCount: number;
  readonly openTimeoutMs: number;
  /** first delay before reopening; doubles up to `maxReconnectDelayMs` */
  readonly reconnectDelayMs: number;
  readonly maxReconnectDelayMs: number;
  readonly onEvent: (e: Exclude<NativeEvent, { kind: 'close' }>) => void;
  readonly onDown: (why: string) => void;
  /** `again`: a reopen after the link was down (not the first open) */
  readonly onUp: (again: boolean) => void;
}

export class EventsLink {
  private conn: NativeConnection | null = null;
  private generation = 0;
  private closed = false;
  private timer: NodeJS.Timeout | null = null;
  private delay: number;
  private everUp = false;

  constructor(private readonly opts: EventsLinkOptions) {
    this.delay = opts.reconnectDelayMs;
  }

  get up(): boolean {
    return this.conn !== null;
  }

  /** Opens the link; rejects when libvirtd cannot be reached now (nothing is retried then). */
  async start(): Promise<void> {
    await this.open();
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    const conn = this.conn;
    this.conn = null;
    this.generation += 1;
    if (conn !== null) await conn.close().catch(() => undefined);
  }

  private async open(): Promise<void> {
    const { virt, uri } = this.opts;
    const generation = ++this.generation;
    const opening = virt.open(uri, (e) => this.onNative(generation, e), this.opts.keepAliveIntervalSec, this.opts.keepAliveCount);
    const conn = await withDeadline(this.opts.openTimeoutMs, `opening the libvirt events connection to ${uri}`, () => opening, (late) => void late.close().catch(() => undefined));
    try {
      await withDeadline(this.opts.openTimeoutMs, 'registering domain events', () => conn.registerDomainEvents());
    } catch (err) {
      await conn.close().catch(() => undefined);
      throw err;
    }
    if (this.closed || generation !== this.generation) {
      await conn.close().catch(() => undefined);
      return;
    }
    this.conn = conn;
    this.delay = this.opts.reconnectDelayMs;
    const again = this.everUp;
    this.everUp = true;
    this.opts.log.info({ uri, again }, 'libvirt events connection up');
    this.opts.onUp(again);
  }

  private onNative(generation: number, e: NativeEvent): void {
    if (generation !== this.generation) return;
    if (e.kind !== 'close') {
      this.opts.onEvent(e);
      return;
    }
    if (e.event === this.opts.virt.constants.VIR_CONNECT_CLOSE_REASON_CLIENT) return;
    const conn = this.conn;
    this.conn = null;
    this.generation += 1;
    conn?.close().catch(() => undefined);
    const why = `closed by libvirt (reason ${e.event})`;
    this.opts.log.warn({ why }, 'libvirt events connection lost');
    this.opts.onDown(why);
    this.schedule();
  }

  private schedule(): void {
    if (this.closed || this.timer !== null) return;
    const delay = this.delay;
    this.delay = Math.min(delay * 2, this.opts.maxReconnectDelayMs);
    this.timer = setTimeout(() => {
      this.timer = null;
      if (this.closed || this.conn !== null) return;
      this.open().catch((err: unknown) => {
        this.opts.log.debug({ err }, 'libvirt events connection: reopen failed');
        this.schedule();
      });
    }, delay);
    this.timer.unref();
  }
}
