import type { NativeDomain } from './virt.native.js';

/** `[active, persistent]`: which definitions a write must reach (AFFECT_LIVE / AFFECT_CONFIG). */
export type DomainState = readonly [active: boolean, persistent: boolean];

export interface CachedDomain {
  readonly dom: NativeDomain;
  /** The last state read, kept only while domain events can tell us it changed. */
  state: DomainState | null;
  /** Bumped by every invalidation: a state read that raced one is not kept. */
  version: number;
}

/**
 * One connection's domain handles by UUID, each with its last known state. Lives and dies
 * with the connection: a new connection starts empty, so nothing read over an old one (or
 * missed while disconnected) survives a reconnect. Bounded; when full it starts over.
 */
export class DomainCache {
  private readonly entries = new Map<string, CachedDomain>();

  constructor(private readonly max: number) {}

  get(vmId: string): CachedDomain | undefined {
    return this.entries.get(vmId.toLowerCase());
  }

  add(vmId: string, dom: NativeDomain): CachedDomain {
    if (this.entries.size >= this.max) this.entries.clear();
    const entry: CachedDomain = { dom, state: null, version: 0 };
    this.entries.set(vmId.toLowerCase(), entry);
    return entry;
  }

  forget(vmId: string): void {
    const entry = this.entries.get(vmId.toLowerCase());
    if (entry !== undefined) invalidate(entry);
    this.entries.delete(vmId.toLowerCase());
  }

  /** The domain's state may have changed (a lifecycle event): read it again next time. */
  invalidate(vmId: string): void {
    const entry = this.entries.get(vmId.toLowerCase());
    if (entry !== undefined) invalidate(entry);
  }
}

export function invalidate(entry: CachedDomain): void {
  entry.state = null;
  entry.version += 1;
}

export function sameState(a: DomainState, b: DomainState): boolean {
  return a[0] === b[0] && a[1] === b[1];
}
