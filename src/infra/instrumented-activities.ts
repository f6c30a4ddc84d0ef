import { ROOT_CONTEXT, SpanKind, trace } from '@opentelemetry/api';
import { driveKey } from '../domain/media.js';
import type { Logger } from './logging.js';
import type { Metrics, Step } from './metrics.js';
import { recordFailure, type Tracing } from './tracing.js';

/**
 * A decorator over the CD-ROM machine's activities: times every effect step into
 * `cdrom_step_duration_seconds`, logs it (debug when it worked, warn when it threw) with
 * the command's ids, keeps `cdrom_active_volumes` in line with the storage adapter, and
 * (tracing on) makes each step of a traced command a child span of the command's span.
 *
 * The shapes below are structural on purpose: infra does not import the machines'
 * types, and whatever has these methods can be instrumented.
 */

interface DriveInput {
  readonly vmId: string;
  readonly drive: string;
}

/** A command's media (PDIV, legacy path or null); only its volumeID or path is read. */
type MediaLike = unknown;

export interface StepActivities {
  inspect(input: DriveInput & { readonly commandId: string | null }): Promise<unknown>;
  recover(input: DriveInput): Promise<unknown>;
  editMetadata(input: DriveInput): Promise<unknown>;
  writeJournal(input: DriveInput & { readonly record: { readonly commandId: string } }): Promise<unknown>;
  prepareVolume(input: DriveInput & { readonly media: MediaLike }): Promise<{ readonly diskType: string }>;
  updateDevice(input: DriveInput): Promise<unknown>;
  teardownVolume(input: DriveInput & { readonly media: MediaLike }): Promise<unknown>;
  forgetCommand(input: DriveInput & { readonly commandId: string }): Promise<unknown>;
}

export interface InstrumentOptions {
  /** Step logs; nothing is logged without it. */
  readonly log?: Logger;
  /** The storage adapter's listing; without it the active-volumes gauge is left alone. */
  readonly storage?: { listActiveVolumes(): Promise<readonly unknown[]> };
  /**
   * Least time between two listings (each costs an `lvs` or a scan of /sys): under a
   * stream of commands the gauge lags by at most this much instead of listing nonstop.
   */
  readonly refreshIntervalMs?: number;
  /** Step spans under the command spans the consumer opened; none without it (or when off). */
  readonly tracing?: Tracing;
}

/** Drives remembered before the oldest go. */
const MAX_TRACKED = 4096;

/** A volume's identity in a command: the volumeID of a PDIV, else the legacy path. */
function mediaKey(media: MediaLike): string | null {
  if (typeof media !== 'object' || media === null) return null;
  const m = media as { readonly volumeID?: unknown; readonly path?: unknown };
  const id = m.volumeID ?? m.path;
  return typeof id === 'string' ? id.toLowerCase() : null;
}

const keyOf = (i: DriveInput): string => driveKey(i.vmId, i.drive);

function remember<V>(map: Map<string, V>, key: string, value: V): void {
  map.delete(key);
  map.set(key, value);
  if (map.size > MAX_TRACKED) map.delete(map.keys().next().value as string);
}

export function instrumentActivities<A extends StepActivities>(activities: A, metrics: Pick<Metrics, 'stepDuration' | 'activeVolumes'>, options: InstrumentOptions = {}): A {
  const log = options.log?.child({ component: 'steps' });
  // A drive runs one request at a time, so the command a drive's step belongs to is the
  // one its last inspect named.
  const commandOf = new Map<string, { vmId: string; drive: string; commandId: string | null }>();
  const idsOfDrive = (i: DriveInput): Record<string, string | null> => ({
    commandId: commandOf.get(keyOf(i))?.commandId ?? null,
    vmId: i.vmId,
    drive: i.drive,
  });

  const idsOfVolume = (i: DriveInput & { readonly media: MediaLike }): Record<string, string | null> => ({ ...idsOfDrive(i), volume: mediaKey(i.media) });

  // The gauge follows this worker's own prepares and teardowns at once (a scrape right
  // after an eject must not show the ejected volume), and a listing of the system now and
  // then corrects it for what others did. A listing that overlapped one of our own
  // changes may predate it: it is not applied, and another listing follows.
  let active: Set<string> | null = null;
  let changes = 0;
  const noteVolume = (media: MediaLike, isActive: boolean): void => {
    const key = mediaKey(media);
    if (key === null) return;
    changes += 1;
    if (active === null) return;
    if (isActive) active.add(key);
    else active.delete(key);
    metrics.activeVolumes.set(active.size);
  };

  // One listing in flight at most, and at most one per interval; requests meanwhile fold
  // into one more listing after it.
  const interval = options.refreshIntervalMs ?? 2_000;
  let refreshing = false;
  let again = false;
  let lastAt = -Infinity;
  const refreshActive = (): void => {
    const storage = options.storage;
    if (storage === undefined) return;
    if (refreshing) {
      again = true;
      return;
    }
    refreshing = true;
    const wait = Math.max(0, lastAt + interval - performance.now());
    const timer = setTimeout(() => {
      lastAt = performance.now();
      const changesBefore = changes;
      storage
        .listActiveVolumes()
        .then((vols) => {
          if (active !== null && changes !== changesBefore) {
            again = true;
            return;
          }
          active = new Set(vols.map(mediaKey).filter((k) => k !== null));
          metrics.activeVolumes.set(active.size);
        })
        .catch((err: unknown) => log?.debug({ err }, 'listing active volumes failed; gauge unchanged'))
        .finally(() => {
          refreshing = false;
          if (again) {
            again = false;
            refreshActive();
          }
        });
    }, wait);
    timer.unref();
  };

  async function timed<T>(step: Step, ids: Record<string, string | null>, run: () => Promise<T>): Promise<T> {
    const t0 = performance.now();
    try {
      const out = await run();
      const durationMs = Math.round((performance.now() - t0) * 1000) / 1000;
      metrics.stepDuration.observe({ step, result: 'ok' }, durationMs / 1000);
      log?.debug({ ...ids, step, durationMs }, `step ${step} done`);
      return out;
    } catch (err) {
      const durationMs = Math.round((performance.now() - t0) * 1000) / 1000;
      metrics.stepDuration.observe({ step, result: 'error' }, durationMs / 1000);
      log?.warn({ ...ids, step, durationMs, err }, `step ${step} failed`);
      throw err;
    }
  }

  // Off (no tracing, or no SDK): the step runs as it is, not even a lookup.
  const tracing = options.tracing?.enabled === true ? options.tracing : null;
  const span = tracing === null ? <T>(_name: string, _input: DriveInput, run: () => Promise<T>): Promise<T> => run() : spanned(tracing, (i) => commandOf.get(keyOf(i))?.commandId);

  refreshActive();

  return {
    ...activities,
    inspect: async (input) => {
      remember(commandOf, keyOf(input), { vmId: input.vmId, drive: input.drive, commandId: input.commandId });
      return span('inspect', input, () => activities.inspect(input));
    },
    recover: async (input) => {
      try {
        return await span('recover', input, () => activities.recover(input));
      } finally {
        refreshActive();
      }
    },
    forgetCommand: (input) => span('forgetCommand', input, () => activities.forgetCommand(input)),
    editMetadata: (input) => span('editMetadata', input, () => timed('metadata', idsOfDrive(input), () => activities.editMetadata(input))),
    writeJournal: (input) => span('writeJournal', input, () => timed('journal', { commandId: input.record.commandId, vmId: input.vmId, drive: input.drive }, () => activities.writeJournal(input))),
    prepareVolume: (input) =>
      span('prepareVolume', input, () => timed('prepare', idsOfVolume(input), () => activities.prepareVolume(input))).then((prepared) => {
        if (prepared.diskType === 'block') {
          noteVolume(input.media, true);
          refreshActive();
        }
        return prepared;
      }),
    updateDevice: (input) => span('updateDevice', input, () => timed('update', idsOfDrive(input), () => activities.updateDevice(input))),
    teardownVolume: (input) =>
      span('teardownVolume', input, () => timed('teardown', idsOfVolume(input), () => activities.teardownVolume(input)))
        .then((res) => {
          if (res === 'done') noteVolume(input.media, false);
          return res;
        })
        .finally(refreshActive),
  };
}

/**
 * A step as a child span of its command's span, found through the step's drive
 * (`CommandSpans`: the context cannot flow through the machine's actors). A step with
 * no traced command (a background reconciliation) runs without a span.
 */
/** Steps as child spans of the span of the command the drive runs (`commandIdOf`: its last inspect's). */
function spanned(tracing: Tracing, commandIdOf: (i: DriveInput) => string | null | undefined) {
  return <T>(name: string, input: DriveInput, run: () => Promise<T>): Promise<T> => {
    const parent = tracing.commands.spanOf(input.vmId, input.drive, commandIdOf(input));
    if (parent === undefined) return run();
    const span = tracing.tracer.startSpan(`cdrom.step ${name}`, { kind: SpanKind.INTERNAL, attributes: { 'cdrom.step': name, 'cdrom.vm_id': input.vmId, 'cdrom.drive': input.drive } }, trace.setSpan(ROOT_CONTEXT, parent));
    return run().then(
      (out) => {
        span.end();
        return out;
      },
      (err: unknown) => {
        recordFailure(span, err);
        span.end();
        throw err;
      },
    );
  };
}
