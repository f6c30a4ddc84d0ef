/** `[active, persistent]`: which definitions a write must reach (AFFECT_LIVE / AFFECT_CONFIG). */
export type DomainState = readonly [active: boolean, persistent: boolean];

interface Entry {
  state: DomainState | null;
  /** Bumped by every invalidation: a state read that raced one is not kept. */
  version: number;
}

/**
 * The last known state of each running domain, by UUID, for all the adapter's
 * connections. Kept only while domain events can say it changed: `disable` (the events
 * connection dropped) forgets everything and keeps nothing until `enable`. Bounded; when
 * full it starts over.
 */
export class DomainStates {
  private readonly entries = new Map<string, Entry>();
  private enabled = false;

  constructor(private readonly max: number) {}

  get(vmId: string): DomainState | null {
    return this.entries.get(vmId.toLowerCase())?.state ?? null;
  }

  /** The version to pass to `keep` with a state read from now on. */
  version(vmId: string): number {
    return this.entries.get(vmId.toLowerCase())?.version ?? 0;
  }

  /** Keeps `state` unless an invalidation came since `version` was taken. */
  keep(vmId: string, state: DomainState, version: number): void {
    if (!this.enabled) return;
    const key = vmId.toLowerCase();
    let entry = this.entries.get(key);
    if (entry === undefined) {
      if (version !== 0) return;
      if (this.entries.size >= this.max) this.entries.clear();
      this.entries.set(key, (entry = { state: null, version: 0 }));
    }
    if (entry.version === version) entry.state = state;
  }

  /** The domain's state may have changed (a lifecycle event, a refused write). */
  invalidate(vmId: string): void {
    const key = vmId.toLowerCase();
    const entry = this.entries.get(key);
    if (entry !== undefined) {
      entry.state = null;
      entry.version += 1;
    } else if (this.enabled) {
      // a read in flight for a domain not yet cached must not be kept either
      if (this.entries.size >= this.max) this.entries.clear();
      this.entries.set(key, { state: null, version: 1 });
    }
  }

  enable(): void {
    this.enabled = true;
  }

  disable(): void {
    this.enabled = false;
    for (const entry of this.entries.values()) {
      entry.state = null;
      entry.version += 1;
    }
  }
}

export function sameState(a: DomainState, b: DomainState): boolean {
  return a[0] === b[0] && a[1] === b[1];
}
