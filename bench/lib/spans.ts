import { median, quantile, round } from './common.js';

/**
 * Where a parallel run waits: every call of one kind (a step) as a span, then per kind
 * how many were in flight at once and how much faster the kind's work got done than one
 * after another. A step that some lock serialises shows many in flight, latencies grown by
 * about that many, and a speedup near 1.
 */

export interface Span {
  readonly step: string;
  readonly start: number;
  readonly end: number;
}

export interface StepStats {
  readonly n: number;
  readonly p50: number;
  readonly p99: number;
  /** most spans of the step open at one moment */
  readonly maxInFlight: number;
  /** summed duration / time with at least one open: how many were in flight on average while any was */
  readonly meanInFlight: number;
  /** ms during which at least one span of the step was open */
  readonly busyMs: number;
}

export function stepStats(spans: readonly Span[]): StepStats {
  const ds = spans.map((s) => s.end - s.start);
  const edges = spans.flatMap((s) => [
    { t: s.start, d: 1 },
    { t: s.end, d: -1 },
  ]);
  // ends before starts at the same instant: back-to-back calls do not overlap
  edges.sort((a, b) => a.t - b.t || a.d - b.d);
  let open = 0;
  let max = 0;
  let busy = 0;
  let since = 0;
  for (const e of edges) {
    if (open === 0 && e.d === 1) since = e.t;
    open += e.d;
    if (open === 0) busy += e.t - since;
    max = Math.max(max, open);
  }
  const sum = ds.reduce((a, b) => a + b, 0);
  return { n: spans.length, p50: round(median(ds)), p99: round(quantile(ds, 0.99)), maxInFlight: max, meanInFlight: round(busy > 0 ? sum / busy : 0), busyMs: round(busy) };
}

/** Spans grouped by step. */
export function byStep(spans: readonly Span[]): Record<string, StepStats> {
  const steps = [...new Set(spans.map((s) => s.step))];
  return Object.fromEntries(steps.map((k) => [k, stepStats(spans.filter((s) => s.step === k))]));
}

/**
 * The same calls one after another and `parallel` at once: latency under load, and how
 * much sooner all of them were done (1 = no gain: serialised somewhere).
 */
export interface Comparison {
  readonly sequential: StepStats;
  readonly parallel: StepStats;
  /** the sequential run's summed time / the parallel run's busy time */
  readonly speedup: number;
}

export function compare(sequential: readonly Span[], parallel: readonly Span[]): Comparison {
  const s = stepStats(sequential);
  const p = stepStats(parallel);
  return { sequential: s, parallel: p, speedup: round(p.busyMs > 0 ? s.busyMs / p.busyMs : 0) };
}

/** Runs `jobs` with at most `limit` at once, in order of the array; resolves when all are done. */
export async function bounded<T>(items: readonly T[], limit: number, job: (item: T, lane: number) => Promise<void>): Promise<void> {
  let next = 0;
  const lane = async (id: number): Promise<void> => {
    for (let i = next++; i < items.length; i = next++) await job(items[i] as T, id);
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(limit, items.length)) }, (_, id) => lane(id)));
}
