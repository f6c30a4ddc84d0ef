/**
 * The commands this worker holds unacknowledged, by commandId (lower case): the broker may
 * still redeliver them, so their journal records must outlive any eviction (CONTRACT §4:
 * a repeat is answered with the first outcome). A command counts from its delivery until
 * a delivery of it is acknowledged on a live channel. One whose delivery was abandoned
 * (the channel died, the worker stopped) stays counted: the broker redelivers it, here
 * or, after `maxAgeMs` without news of it, presumably to another worker.
 */
export class UnackedCommands {
  private readonly held = new Map<string, { handlers: number; seenAt: number }>();

  constructor(
    private readonly maxAgeMs = 3_600_000,
    private readonly now: () => number = Date.now,
  ) {}

  delivered(commandId: string): void {
    const id = commandId.toLowerCase();
    const h = this.held.get(id);
    if (h) {
      h.handlers += 1;
      h.seenAt = this.now();
    } else {
      this.held.set(id, { handlers: 1, seenAt: this.now() });
    }
  }

  /** A delivery of it was acknowledged. */
  acked(commandId: string): void {
    const id = commandId.toLowerCase();
    const h = this.held.get(id);
    if (h === undefined) return;
    h.handlers -= 1;
    // another delivery of the same commandId (sent twice) may still be handled
    if (h.handlers <= 0) this.held.delete(id);
  }

  /** A delivery of it ended without an ack: the broker still holds it for redelivery. */
  abandoned(commandId: string): void {
    const h = this.held.get(commandId.toLowerCase());
    if (h === undefined) return;
    h.handlers = Math.max(0, h.handlers - 1);
    h.seenAt = this.now();
  }

  has(commandId: string): boolean {
    const id = commandId.toLowerCase();
    const h = this.held.get(id);
    if (h === undefined) return false;
    if (h.handlers === 0 && this.now() - h.seenAt > this.maxAgeMs) {
      this.held.delete(id);
      return false;
    }
    return true;
  }

  get size(): number {
    return this.held.size;
  }
}
