import { CdromError, isCdromError } from '../../domain/errors.js';
import type { Logger } from '../../domain/logger.js';
import { withDeadline } from '../deadline.js';
import type { NativeConnection, NativeDomain } from './virt.native.js';

/**
 * The connections the adapter makes its calls on. A call that hangs (a VM's QEMU monitor
 * stopped answering, or libvirtd itself) holds up the other calls on its connection —
 * measured here: with one VM's QEMU stopped, another VM's XMLDesc on the same connection
 * waited as long as the hung updateDeviceFlags — and libvirtd serves at most
 * `max_client_requests` (default 5) calls of one connection at once. So a connection
 * serves one key (one VM) at a time, within that limit; more connections are opened as
 * needed, and a connection with a stuck call takes no new ones ("retiring"): it is
 * closed once its calls have all returned. Closing it earlier would not help: libvirtd
 * finishes the job when QEMU answers, whoever waits for it.
 *
 * Every call has a deadline. A read that misses it fails with a retryable TIMEOUT (its
 * call is left to return on its own, still counted as stuck); a write (`mode: 'write'`)
 * is never abandoned: it is marked stuck, counted and logged, and its promise settles
 * only when the call has returned — its caller decides how long to wait, and whatever
 * waits on the drive stays held until then.
 */

export interface PooledConnection {
  readonly id: number;
  readonly conn: NativeConnection;
  /** domain handles looked up on this connection (a handle is only valid on its own) */
  readonly domains: Map<string, NativeDomain>;
  /** places taken: callers running on it, and calls they left behind that have not returned */
  inFlight: number;
  /** the key (VM) its callers are for while it has any; null when idle or unkeyed */
  key: string | null;
  /** a call on it passed its deadline: no new callers; closed once its calls returned */
  retiring: boolean;
  dead: boolean;
}

export interface PoolOptions {
  readonly open: () => Promise<NativeConnection>;
  readonly log: Logger;
  /** libvirtd's max_client_requests for this client (default 5) */
  readonly maxCallsPerConnection?: number;
  /** open connections at most, retiring ones included */
  readonly maxConnections?: number;
  /** deadline of opening a connection and of each call */
  readonly openTimeoutMs: number;
  readonly callTimeoutMs: number;
}

export type CallMode = 'read' | 'write';

/** One caller's place on a connection; kept until its calls have all returned. */
export interface Lease {
  readonly c: PooledConnection;
  outstanding: number;
  done: boolean;
}

export class ConnectionPool {
  private readonly conns: PooledConnection[] = [];
  private opening: Promise<PooledConnection> | null = null;
  private readonly waiting: (() => void)[] = [];
  private nextId = 1;
  private closed = false;
  private stuckCalls = 0;
  private readonly log: Logger;
  private readonly perConnection: number;
  private readonly maxConnections: number;

  constructor(private readonly opts: PoolOptions) {
    this.log = opts.log;
    // One place below libvirtd's limit: a caller may have two quick calls out at once.
    this.perConnection = Math.max(1, (opts.maxCallsPerConnection ?? 5) - 1);
    this.maxConnections = Math.max(1, opts.maxConnections ?? 32);
    this.log.debug({ perConnection: this.perConnection, maxConnections: this.maxConnections }, 'libvirt connection pool');
  }

  /** Calls past their deadline that have not returned. */
  get hung(): number {
    return this.stuckCalls;
  }

  get size(): number {
    return this.conns.length;
  }

  /**
   * Runs `fn` on a connection with a free place that serves no other key now (`key`
   * null: one that serves nobody). `fn` gets the connection (for its handles) and must
   * make its libvirt calls through `call`.
   */
  async with<T>(key: string | null, fn: (lease: Lease) => Promise<T>): Promise<T> {
    const lease: Lease = { c: await this.acquire(key), outstanding: 0, done: false };
    try {
      return await fn(lease);
    } finally {
      lease.done = true;
      if (lease.outstanding === 0) this.release(lease.c);
    }
  }

  /**
   * One libvirt call on `c` with the deadline (see the class comment). The connection's
   * place is taken until the call returns, even when the caller stopped waiting.
   */
  call<T>(lease: Lease, what: string, mode: CallMode, fn: () => Promise<T>): Promise<T> {
    const { c } = lease;
    lease.outstanding += 1;
    const started = Date.now();
    let stuck = false;
    const work = fn();
    const timer = setTimeout(() => {
      stuck = true;
      this.stuckCalls += 1;
      this.retire(c, `${what} has not returned after ${this.opts.callTimeoutMs} ms`);
      this.log.warn({ call: what, connection: c.id, timeoutMs: this.opts.callTimeoutMs }, 'libvirt call hung');
    }, this.opts.callTimeoutMs);
    const returned = (): void => {
      clearTimeout(timer);
      if (stuck) {
        this.stuckCalls -= 1;
        this.log.info({ call: what, connection: c.id, durationMs: Date.now() - started }, 'hung libvirt call returned');
      }
      lease.outstanding -= 1;
      if (lease.done && lease.outstanding === 0) this.release(c);
    };
    work.then(returned, returned);
    if (mode === 'write') return work;
    return withDeadline(this.opts.callTimeoutMs, what, () => work);
  }

  /** The connection failed (connection error on a call, or libvirtd went away): never used again. */
  drop(c: PooledConnection, why: string): void {
    if (c.dead) return;
    this.discard(c);
    this.log.warn({ connection: c.id, why }, 'libvirt connection dropped');
    this.wake();
  }

  /** Every connection: libvirtd restarted (its old connections are all dead). */
  dropAll(why: string): void {
    for (const c of [...this.conns]) this.drop(c, why);
  }

  async close(): Promise<void> {
    this.closed = true;
    const all = [...this.conns];
    this.conns.length = 0;
    for (const w of this.waiting.splice(0)) w();
    await Promise.all(all.map((c) => c.conn.close().catch(() => undefined)));
  }

  private async acquire(key: string | null): Promise<PooledConnection> {
    for (;;) {
      if (this.closed) throw new CdromError('INTERNAL', 'hypervisor adapter is closed');
      const usable = (c: PooledConnection): boolean => !c.retiring && !c.dead && c.inFlight < this.perConnection;
      const free = (key === null ? undefined : this.conns.find((c) => usable(c) && c.key === key)) ?? this.conns.find((c) => usable(c) && c.inFlight === 0);
      if (free !== undefined) {
        if (free.inFlight === 0) free.key = key;
        free.inFlight += 1; // the place is the caller's until release()
        return free;
      }
      if (this.conns.length < this.maxConnections || this.conns.every((c) => c.retiring)) {
        if (this.opening === null) {
          const opening = this.openOne();
          this.opening = opening;
          void opening.then(
            () => {
              if (this.opening === opening) this.opening = null;
              this.wake();
            },
            () => {
              if (this.opening === opening) this.opening = null;
            },
          );
        }
        await this.opening;
        continue;
      }
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
  }

  private release(c: PooledConnection): void {
    c.inFlight -= 1;
    if (c.inFlight === 0) c.key = null;
    this.closeIfDone(c);
    this.wake();
  }

  private async openOne(): Promise<PooledConnection> {
    let conn: NativeConnection;
    try {
      // A late open is closed when it lands rather than leaked.
      conn = await withDeadline(this.opts.openTimeoutMs, 'opening a libvirt connection', () => this.opts.open(), (late) => void late.close().catch(() => undefined));
    } catch (err) {
      if (isCdromError(err)) throw err;
      // libvirtd down or restarting: infrastructure trouble, the command is retried
      throw new CdromError('INTERNAL', `cannot connect to libvirt: ${err instanceof Error ? err.message : String(err)}`, { retryable: true, cause: err });
    }
    if (this.closed) {
      await conn.close().catch(() => undefined);
      throw new CdromError('INTERNAL', 'hypervisor adapter is closed');
    }
    const c: PooledConnection = { id: this.nextId++, conn, domains: new Map(), inFlight: 0, key: null, retiring: false, dead: false };
    this.conns.push(c);
    this.log.debug({ connection: c.id, open: this.conns.length }, 'libvirt connection opened');
    return c;
  }

  private retire(c: PooledConnection, why: string): void {
    if (c.retiring) return;
    c.retiring = true;
    this.log.warn({ connection: c.id, why }, 'libvirt connection retired: new calls go to another one');
    this.wake();
  }

  private closeIfDone(c: PooledConnection): void {
    if (!c.retiring || c.dead || c.inFlight > 0) return;
    this.discard(c);
    this.log.info({ connection: c.id }, 'retired libvirt connection closed');
  }

  /** Out of the pool for good, and closed. */
  private discard(c: PooledConnection): void {
    c.dead = true;
    const i = this.conns.indexOf(c);
    if (i >= 0) this.conns.splice(i, 1);
    c.conn.close().catch(() => undefined);
  }

  private wake(): void {
    for (const w of this.waiting.splice(0)) w();
  }
}
