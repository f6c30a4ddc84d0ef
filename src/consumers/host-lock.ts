import type { Channel } from 'amqplib';
import type { Logger } from '../infra/logging.js';
import type { BusSession } from './connection.js';

/** The lock's queue: exclusive to the connection that declared it, gone when that closes. */
export const lockQueue = (hostId: string): string => `cdrom.lock.${hostId}`;

/**
 * One active worker per host (CONTRACT §9). The worker consumes only while its connection
 * holds an exclusive queue named after the host: the broker lets one connection declare
 * it, refuses every other (405 RESOURCE_LOCKED), and deletes it the moment its owner's
 * connection closes, killed or not. A worker that is refused waits as the standby and
 * tries again every `pollMs`.
 *
 * Why not the queue's own mechanisms (measured on RabbitMQ 3.10): `basic.consume` with
 * `exclusive` is not enforced on quorum queues (a second exclusive consumer is accepted),
 * and single-active-consumer gives a waiting consumer no signal that it is waiting, so
 * a standby could not say so (`/readyz`), and it needs a queue argument that an existing
 * quorum queue cannot be given (see docs/bus-faults.md).
 */
export class HostLock {
  private stopped = false;
  private wake: (() => void) | null = null;

  constructor(
    private readonly hostId: string,
    private readonly log: Logger,
    private readonly pollMs: number,
  ) {}

  /**
   * Resolves true once `session` holds the lock, false when the session died or the
   * worker stopped first. Calls `onStandby` once, the first time it is refused.
   */
  async acquire(session: BusSession, stopping: () => boolean, onStandby: () => void): Promise<boolean> {
    let waiting = false;
    while (session.alive && !stopping() && !this.stopped) {
      const outcome = await this.tryOnce(session);
      if (outcome === 'held') {
        if (waiting) this.log.info({ lock: lockQueue(this.hostId) }, 'the other worker for this host is gone; taking over');
        return true;
      }
      if (outcome === 'no-permission') {
        this.log.warn(
          { lock: lockQueue(this.hostId) },
          'cannot take the host lock (no configure permission on its queue): consuming without it, so a second worker for this host would consume too',
        );
        return true;
      }
      if (!waiting) {
        waiting = true;
        this.log.warn({ lock: lockQueue(this.hostId), retryEveryMs: this.pollMs }, 'another worker is active for this host; waiting as standby');
        onStandby();
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, this.pollMs);
        this.wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.wake = null;
    }
    return false;
  }

  stop(): void {
    this.stopped = true;
    this.wake?.();
  }

  /**
   * One declare on a side channel of the session: a refusal closes that channel only
   * (unlike the session's own channels, whose close ends the session).
   */
  private async tryOnce(session: BusSession): Promise<'held' | 'locked' | 'no-permission'> {
    let ch: Channel | null = null;
    try {
      ch = await session.openSideChannel();
      await ch.assertQueue(lockQueue(this.hostId), { exclusive: true, durable: false });
      return 'held';
    } catch (err) {
      const code = (err as { code?: unknown }).code;
      if (code === 403) return 'no-permission';
      if (code === 405) {
        ch = null; // closed by the broker
        return 'locked';
      }
      throw err;
    } finally {
      // The lock lives with the connection, not with this channel: closing it keeps the queue.
      await ch?.close().catch(() => undefined);
    }
  }
}
