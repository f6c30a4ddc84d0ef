/**
 * Runs at most `n` of the functions given to it at once; the others wait their turn in
 * arrival order, and a finishing one hands its slot straight to the next in line.
 */
export function limiter(n: number): <T>(fn: () => Promise<T>) => Promise<T> {
  let running = 0;
  const waiting: (() => void)[] = [];
  return async <T>(fn: () => Promise<T>): Promise<T> => {
    if (running < n) running += 1;
    else await new Promise<void>((resolve) => waiting.push(resolve));
    try {
      return await fn();
    } finally {
      const next = waiting.shift();
      if (next !== undefined) next();
      else running -= 1;
    }
  };
}

/**
 * Shared or exclusive turns: any number of shared ones at once, or one exclusive one
 * alone. An exclusive one waiting holds back shared ones that arrive after it, so it is
 * not starved; turns are granted in arrival order otherwise.
 */
export class SharedGate {
  private shared = 0;
  private exclusive = false;
  private readonly waiting: { readonly exclusive: boolean; readonly go: () => void }[] = [];

  /** Runs `fn` in a turn of the kind asked for. */
  async run<T>(exclusive: boolean, fn: () => Promise<T>): Promise<T> {
    if (this.mayEnter(exclusive) && this.waiting.length === 0) this.enter(exclusive);
    else await new Promise<void>((go) => this.waiting.push({ exclusive, go }));
    try {
      return await fn();
    } finally {
      if (exclusive) this.exclusive = false;
      else this.shared -= 1;
      this.admit();
    }
  }

  /** How many turns wait; an exclusive one among them delays every later one. */
  get queued(): number {
    return this.waiting.length;
  }

  private mayEnter(exclusive: boolean): boolean {
    return !this.exclusive && (!exclusive || this.shared === 0);
  }

  private enter(exclusive: boolean): void {
    if (exclusive) this.exclusive = true;
    else this.shared += 1;
  }

  private admit(): void {
    for (let next = this.waiting[0]; next !== undefined && this.mayEnter(next.exclusive); next = this.waiting[0]) {
      this.waiting.shift();
      this.enter(next.exclusive);
      next.go();
    }
  }
}
