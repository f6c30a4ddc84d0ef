import { assign, emit, setup } from 'xstate';
import type { ChangeCdCommand } from '../contracts/schemas.js';
import { toCdromError, type ErrorInfo, type WarningInfo } from '../domain/errors.js';
import { isPdiv, sameMedia, type Media } from '../domain/media.js';
import type { DoneRecord, PendingRecord } from '../domain/metadata/journal.metadata.js';
import { actionFor, type Attempt, type ChangeAction, type ChangeResult } from '../domain/outcome.js';
import type { DriveSource, PreparedVolume, TeardownResult } from '../domain/ports.js';
import type { Failpoint } from '../domain/failpoints.js';
import type { Activities, DriveRef, Inspection, MetadataEdit, RecoveryReport } from './cdrom.activities.js';
import { Deadlines, StepRunner } from './step-runner.js';

/**
 * One CD-ROM (vmId, drive). Idle until told to EXECUTE a changeCD or to RECOVER; then it
 * walks the design page's flow for the action step by step — write the intent to the
 * metadata, act, commit — and every "if failed" branch exactly as written. It emits one
 * `settled` event per request and goes back to idle.
 *
 * No I/O here: every effect is one of the injected activities, started by the entry
 * action named after it (`entry: 'prepareVolume'`); its outcome comes back as an event,
 * `<activity>.done` (with the output) or `step.error`. A step has a deadline: one that
 * hangs fails with a retryable TIMEOUT and takes the state's `step.error` branches like
 * any other failure. (Steps are not `invoke`d: a child actor per step made the machine
 * 3–4× dearer per command; `npx tsx bench/steps.bench.ts` measures both.)
 */

/**
 * How a request ended:
 * - `result`: the command's outcome, with the times every event for it carries (a repeat
 *   answered from the journal carries the first one's);
 * - `retry`: infrastructure trouble, outcome unknown;
 * - `suspect`: an earlier worker run ended while running this command; nothing was
 *   touched: run it again on its own (`exclusive`), so that if the worker dies again, this
 *   command is the only one to blame;
 * - `poisoned`: the worker has died while running it more than `crashLimit` times; the
 *   drive is consistent and the journal forgets the command (a replay starts afresh);
 * - `recovered`: a RECOVER request's report.
 */
export type Settlement =
  | { readonly kind: 'result'; readonly result: ChangeResult; readonly replayed: boolean; readonly startedAt: string; readonly finishedAt: string }
  | { readonly kind: 'retry'; readonly error: ErrorInfo; readonly attempt?: Attempt }
  | { readonly kind: 'suspect'; readonly deaths: number }
  | { readonly kind: 'poisoned'; readonly error: ErrorInfo; readonly attempt: Attempt }
  | { readonly kind: 'recovered'; readonly report: RecoveryReport | null; readonly error: ErrorInfo | null };

/** `exclusive`: nothing else runs in this worker meanwhile (a suspect's run, see Settlement). */
export type CdromEvent = { type: 'EXECUTE'; command: ChangeCdCommand; startedAt: string; exclusive?: boolean } | { type: 'RECOVER' };

/** What a started step sends back to its actor. */
export type StepEvent =
  | { type: 'inspect.done'; output: Inspection }
  | { type: 'recover.done'; output: RecoveryReport }
  | { type: 'editMetadata.done'; output: void }
  | { type: 'writeJournal.done'; output: void }
  | { type: 'forgetCommand.done'; output: void }
  | { type: 'prepareVolume.done'; output: PreparedVolume }
  | { type: 'updateDevice.done'; output: void }
  | { type: 'teardownVolume.done'; output: TeardownResult }
  | { type: 'step.error'; error: unknown };

/** The metadata edits a state writes, by name (the diagram shows the name). */
type EditSet = 'begin' | 'clearLoading' | 'clearEjecting' | 'removeLoadingSpec' | 'removeEjectedSpec' | 'undoSpecs' | 'finish';
export type CdromEmitted = { type: 'settled'; settlement: Settlement };

export type CdromInput = DriveRef;

export interface CdromOptions {
  /** how long one step (one activity call) may take before it fails with TIMEOUT */
  readonly stepTimeoutMs: number;
  /** the runner of the steps, when its owner needs to see them (hangs, quiet drives) */
  readonly steps?: StepRunner;
  /** this worker run (process); pending journal records name it */
  readonly runId?: string;
  /** runs that may end while running one command before it is poison (CDROM_RETRY_LIMIT) */
  readonly crashLimit?: number;
  /** the clock of the times a result records */
  readonly now?: () => Date;
}

interface Context extends DriveRef {
  command: ChangeCdCommand | null;
  startedAt: string;
  inspection: Inspection | null;
  recovered: boolean;
  action: ChangeAction;
  previous: Media | null;
  requested: Media | null;
  current: Media | null;
  prepared: PreparedVolume | null;
  warnings: WarningInfo[];
  error: ErrorInfo | null;
  replayed: DoneRecord | null;
  /** nothing else runs in the worker meanwhile */
  exclusive: boolean;
  /** earlier runs that ended while running this command */
  deaths: number;
  /** when the result was recorded, ISO; '' until then */
  finishedAt: string;
}

const asError = (err: unknown): ErrorInfo => toCdromError(err).toInfo();
/** The error of a `step.error` event (named guards and actions see any event). */
const errorOf = (event: unknown): unknown => (event as { error?: unknown }).error;
const isRetryable = (err: unknown): boolean => toCdromError(err).retryable;
/** A hang is reported as TIMEOUT whatever the step, any other failure under the step's own code. */
const warn = (code: string, err: unknown, what: string): WarningInfo => {
  const e = toCdromError(err);
  return { code: e.code === 'TIMEOUT' ? 'TIMEOUT' : code, message: `${what}: ${e.message}` };
};
const pdiv = (m: Media | null) => (isPdiv(m) ? m : null);
const sourceOf = (p: PreparedVolume): DriveSource => ({ type: p.diskType, path: p.path });

function resultOf(ctx: Context, outcome: 'completed' | 'failed'): ChangeResult {
  return {
    outcome,
    action: ctx.action,
    previous: ctx.previous,
    current: ctx.current,
    warnings: ctx.warnings,
    error: outcome === 'failed' ? ctx.error : null,
  };
}

function beginEdits(ctx: Context): MetadataEdit[] {
  const edits: MetadataEdit[] = [];
  const old = pdiv(ctx.previous);
  const next = pdiv(ctx.requested);
  if (old !== null && ctx.action !== 'load') edits.push({ op: 'mark', pdiv: old, state: 'ejecting' });
  if (next !== null) edits.push({ op: 'add', pdiv: next, state: 'loading' });
  return edits;
}

const fresh = {
  command: null,
  startedAt: '',
  inspection: null,
  recovered: false,
  action: 'none',
  previous: null,
  requested: null,
  current: null,
  prepared: null,
  warnings: [],
  error: null,
  replayed: null,
  exclusive: false,
  deaths: 0,
  finishedAt: '',
} satisfies Omit<Context, keyof DriveRef>;

export function createCdromMachine(activities: Activities, options: CdromOptions = { stepTimeoutMs: 60_000 }) {
  const steps = options.steps ?? new StepRunner(new Deadlines(options.stepTimeoutMs));
  const runId = options.runId ?? 'run';
  const crashLimit = options.crashLimit ?? 5;
  const now = options.now ?? (() => new Date());
  /** The journal record a state writes: what the command set out to do, or how it ended. */
  const journalRecord = (ctx: Context, kind: 'pending' | 'completed' | 'failed'): Omit<PendingRecord, 'status'> | Omit<DoneRecord, 'status'> => {
    const commandId = (ctx.command as ChangeCdCommand).commandId;
    if (kind === 'pending') return { commandId, drive: ctx.drive, action: ctx.action, previous: ctx.previous, requested: ctx.requested, startedAt: ctx.startedAt, run: runId, deaths: ctx.deaths };
    return { commandId, drive: ctx.drive, result: resultOf(ctx, kind), startedAt: ctx.startedAt, finishedAt: ctx.finishedAt };
  };
  return setup({
    types: {
      context: {} as Context,
      events: {} as CdromEvent | StepEvent,
      input: {} as CdromInput,
      emitted: {} as CdromEmitted,
    },
    guards: {
      /** infrastructure trouble, outcome unknown: retry instead of running the failure branch */
      retryable: ({ event }) => isRetryable(errorOf(event)),
    },
    actions: {
      // ---- the steps: each starts one activity; its outcome comes back as an event ----
      inspect: ({ context, self }) =>
        steps.run(self, 'inspect.done', 'reading the drive and its metadata', () => activities.inspect({ vmId: context.vmId, drive: context.drive, commandId: context.command?.commandId ?? null })),
      recover: ({ context, self }) => steps.run(self, 'recover.done', 'recovering the drive', () => activities.recover({ vmId: context.vmId, drive: context.drive })),
      editMetadata: ({ context, self }, params: { edits: EditSet; failpoint?: Failpoint }) => {
        // `rollback` marks the first undo step only; after a failed update that was the new volume's teardown.
        const failpoint = params.failpoint === 'rollback' && context.prepared !== null ? undefined : params.failpoint;
        return steps.run(self, 'editMetadata.done', 'a metadata write', () =>
          activities.editMetadata({ vmId: context.vmId, drive: context.drive, edits: editsOf(params.edits, context), ...(failpoint !== undefined ? { failpoint } : {}) }),
        );
      },
      writeJournal: ({ context, self }, params: { record: 'pending' | 'completed' | 'failed' }) =>
        steps.run(self, 'writeJournal.done', 'a journal write', () => activities.writeJournal({ vmId: context.vmId, drive: context.drive, record: journalRecord(context, params.record) })),
      forgetCommand: ({ context, self }) =>
        steps.run(self, 'forgetCommand.done', 'a journal write', () => activities.forgetCommand({ vmId: context.vmId, drive: context.drive, commandId: (context.command as ChangeCdCommand).commandId })),
      prepareVolume: ({ context, self }) => steps.run(self, 'prepareVolume.done', 'preparing the volume', () => activities.prepareVolume({ vmId: context.vmId, drive: context.drive, media: context.requested as Media })),
      updateDevice: ({ context, self }, params: { source: 'new' | 'empty' }) =>
        steps.run(self, 'updateDevice.done', 'changing the media (updateDeviceFlags)', () =>
          activities.updateDevice({ vmId: context.vmId, drive: context.drive, source: params.source === 'new' ? sourceOf(context.prepared as PreparedVolume) : null }),
        ),
      teardownVolume: ({ context, self }, params: { volume: 'new' | 'old'; failpoint?: Failpoint }) =>
        steps.run(self, 'teardownVolume.done', 'tearing down a volume', () =>
          activities.teardownVolume({ vmId: context.vmId, drive: context.drive, media: (params.volume === 'new' ? context.requested : context.previous) as Media, ...(params.failpoint !== undefined ? { failpoint: params.failpoint } : {}) }),
        ),
      // ---- bookkeeping ----
      /** keep the step's error: the flow fails with the original error */
      keepError: assign({ error: ({ event }) => asError(errorOf(event)) }),
      /** a failure the design page says to log and go on from */
      warn: assign(({ context, event }, params: { code: string; what: string }) => ({
        warnings: [...context.warnings, warn(params.code, errorOf(event), params.what)],
      })),
      settleResult: emit(({ context }) => {
        const r = context.replayed;
        const settlement: Settlement =
          r !== null
            ? { kind: 'result', result: r.result, replayed: true, startedAt: r.startedAt, finishedAt: r.finishedAt ?? now().toISOString() }
            : { kind: 'result', result: resultOf(context, context.error === null ? 'completed' : 'failed'), replayed: false, startedAt: context.startedAt, finishedAt: context.finishedAt || now().toISOString() };
        return { type: 'settled' as const, settlement };
      }),
      /** the result's time, recorded with it */
      stamp: assign({ finishedAt: () => now().toISOString() }),
      /** what the command is to do, from what the drive holds now */
      decide: assign(({ event, context }) => {
        const output = (event as { output: Inspection }).output;
        const same = sameMedia(output.current, context.requested);
        const rec = output.record?.status === 'pending' ? output.record : undefined;
        return {
          inspection: output,
          previous: output.current,
          current: output.current,
          action: actionFor(output.current, context.requested, same),
          ...(rec !== undefined ? { startedAt: rec.startedAt, deaths: rec.run === runId ? (rec.deaths ?? 0) : (rec.deaths ?? 0) + 1 } : {}),
        };
      }),
      settleRetry: emit(({ context }) => ({
        type: 'settled' as const,
        settlement: {
          kind: 'retry' as const,
          error: context.error ?? { code: 'INTERNAL' as const, message: 'retry', retryable: true },
          ...(context.inspection !== null ? { attempt: { action: context.action, previous: context.previous, current: context.current } } : {}),
        },
      })),
      reset: assign(() => ({ ...fresh, warnings: [] })),
    },
  }).createMachine({
    id: 'cdrom',
    context: ({ input }) => ({ vmId: input.vmId, drive: input.drive, ...fresh, warnings: [] }),
    initial: 'idle',
    states: {
      idle: {
        on: {
          EXECUTE: {
            target: 'inspecting',
            actions: assign(({ event }) => ({
              command: event.command,
              startedAt: event.startedAt,
              requested: event.command.media,
              exclusive: event.exclusive === true,
            })),
          },
          RECOVER: 'recovering',
        },
      },

      recovering: {
        entry: 'recover',
        on: {
          'recover.done': {
            target: 'idle',
            actions: emit(({ event }) => ({ type: 'settled' as const, settlement: { kind: 'recovered' as const, report: event.output, error: null } })),
          },
          'step.error': {
            target: 'idle',
            actions: emit(({ event }) => ({ type: 'settled' as const, settlement: { kind: 'recovered' as const, report: null, error: asError(event.error) } })),
          },
        },
      },

      inspecting: {
        entry: 'inspect',
        on: {
          'inspect.done': [
            {
              // Seen before and finished: answer the same, touch nothing. A change the
              // metadata still records (its final write was lost) is recovered first.
              guard: ({ event, context }) => event.output.record?.status === 'done' && (!event.output.pending || context.recovered),
              target: 'settled',
              actions: assign(({ event }) => ({ replayed: event.output.record as DoneRecord })),
            },
            {
              guard: ({ event, context }) => event.output.pending && !context.recovered,
              target: 'recoveringFirst',
            },
            {
              guard: ({ event }) => event.output.pending,
              target: 'failed',
              actions: assign(({ event, context }) => ({
                action: actionFor(event.output.current, context.requested, false),
                previous: event.output.current,
                current: event.output.current,
                error: { code: 'INTERNAL' as const, message: `metadata of ${context.drive} records a change that matches no recovery row; left alone for an operator`, retryable: false },
              })),
            },
            {
              // A redelivery of a command whose change is already in the drive.
              guard: ({ event, context }) => event.output.record?.status === 'pending' && sameMedia(event.output.current, context.requested),
              target: 'recordingDone',
              actions: assign(({ event }) => {
                const rec = event.output.record as PendingRecord;
                return { action: rec.action, previous: rec.previous, current: event.output.current, startedAt: rec.startedAt };
              }),
            },
            {
              // Started by a run that has ended since: it died (or stopped) while running it.
              guard: ({ event }) => event.output.record?.status === 'pending' && event.output.record.run !== runId,
              target: 'suspected',
              actions: 'decide',
            },
            { target: 'deciding', actions: 'decide' },
          ],
          'step.error': [
            { guard: 'retryable', target: 'retrying', actions: 'keepError' },
            {
              target: 'settled',
              actions: assign(({ event, context }) => ({
                action: context.requested === null ? ('eject' as const) : ('load' as const),
                error: asError(event.error),
              })),
            },
          ],
        },
      },

      recoveringFirst: {
        entry: 'recover',
        on: {
          'recover.done': { target: 'inspecting', actions: assign({ recovered: true }) },
          'step.error': [
            { guard: 'retryable', target: 'retrying', actions: 'keepError' },
            { target: 'inspecting', actions: assign({ recovered: true }) },
          ],
        },
      },

      suspected: {
        always: [
          { guard: ({ context }) => context.deaths > crashLimit, target: 'poisoned' },
          { guard: ({ context }) => !context.exclusive, target: 'isolating' },
          { target: 'deciding' },
        ],
      },

      isolating: {
        entry: emit(({ context }) => ({ type: 'settled' as const, settlement: { kind: 'suspect' as const, deaths: context.deaths } })),
        always: { target: 'idle', actions: 'reset' },
      },

      // Given up: the drive is as the recovery left it; forget the command so that a
      // replay of its dead letter starts afresh.
      poisoned: {
        entry: 'forgetCommand',
        on: {
          'forgetCommand.done': 'givenUp',
          'step.error': [{ guard: 'retryable', target: 'retrying', actions: 'keepError' }, { target: 'givenUp' }],
        },
      },

      givenUp: {
        entry: emit(({ context }) => ({
          type: 'settled' as const,
          settlement: {
            kind: 'poisoned' as const,
            error: { code: 'INTERNAL' as const, message: `worker crashed while running it: ${context.deaths} runs ended during this command (CDROM_RETRY_LIMIT ${crashLimit})`, retryable: false },
            attempt: { action: context.action, previous: context.previous, current: context.current },
          },
        })),
        always: { target: 'idle', actions: 'reset' },
      },

      deciding: {
        always: [
          { guard: ({ context }) => context.action === 'none', target: 'recordingDone' },
          { target: 'journaling' },
        ],
      },

      journaling: {
        entry: { type: 'writeJournal', params: { record: 'pending' } },
        on: {
          'writeJournal.done': [
            { guard: ({ context }) => context.action === 'eject', target: 'ejecting' },
            { guard: ({ context }) => context.action === 'load', target: 'loading' },
            { target: 'changing' },
          ],
          'step.error': [
            { guard: 'retryable', target: 'retrying', actions: 'keepError' },
            { target: 'settled', actions: 'keepError' },
          ],
        },
      },

      // VM with empty tray, insert CD.
      loading: {
        initial: 'begin',
        states: {
          begin: {
            entry: { type: 'editMetadata', params: { edits: 'begin', failpoint: 'metadata-begin' } },
            on: {
              'editMetadata.done': 'prepare',
              'step.error': [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                { target: '#cdrom.recordingFailed', actions: 'keepError' },
              ],
            },
          },
          prepare: {
            entry: 'prepareVolume',
            on: {
              'prepareVolume.done': { target: 'update', actions: assign({ prepared: ({ event }) => event.output }) },
              'step.error': [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: remove drive spec (log errors), fail the flow with original error
                { target: 'removeSpec', actions: 'keepError' },
              ],
            },
          },
          update: {
            entry: { type: 'updateDevice', params: { source: 'new' } },
            on: {
              'updateDevice.done': { target: '#cdrom.recordingDone', actions: assign({ current: ({ context }) => context.requested }) },
              'step.error': [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: tear down the volume (log error), remove the drive spec (log error), fail
                { target: 'teardownNew', actions: 'keepError' },
              ],
            },
          },
          teardownNew: {
            entry: { type: 'teardownVolume', params: { volume: 'new', failpoint: 'rollback' } },
            on: {
              'teardownVolume.done': 'removeSpec',
              'step.error': { target: 'removeSpec', actions: { type: 'warn', params: { code: 'TEARDOWN_FAILED', what: 'tearing down the new volume' } } },
            },
          },
          removeSpec: {
            entry: { type: 'editMetadata', params: { edits: 'removeLoadingSpec', failpoint: 'rollback' } },
            on: {
              'editMetadata.done': '#cdrom.recordingFailed',
              'step.error': { target: '#cdrom.recordingFailed', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'removing the loading drive spec' } } },
            },
          },
        },
      },

      // VM with loaded CD, eject CD.
      ejecting: {
        initial: 'begin',
        states: {
          begin: {
            entry: { type: 'editMetadata', params: { edits: 'begin', failpoint: 'metadata-begin' } },
            on: {
              'editMetadata.done': 'update',
              'step.error': [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                { target: '#cdrom.recordingFailed', actions: 'keepError' },
              ],
            },
          },
          update: {
            entry: { type: 'updateDevice', params: { source: 'empty' } },
            on: {
              'updateDevice.done': { target: 'teardown', actions: assign({ current: null }) },
              'step.error': [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: remove the state attribute (log error), fail with original error
                { target: 'clearState', actions: 'keepError' },
              ],
            },
          },
          clearState: {
            entry: { type: 'editMetadata', params: { edits: 'clearEjecting', failpoint: 'rollback' } },
            on: {
              'editMetadata.done': '#cdrom.recordingFailed',
              'step.error': { target: '#cdrom.recordingFailed', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'removing state="ejecting"' } } },
            },
          },
          teardown: {
            entry: { type: 'teardownVolume', params: { volume: 'old', failpoint: 'teardown' } },
            on: {
              'teardownVolume.done': [
                {
                  // used by another VM: log and succeed
                  guard: ({ event }) => event.output === 'in-use',
                  target: '#cdrom.recordingDone',
                  actions: assign({ warnings: ({ context }) => [...context.warnings, { code: 'VOLUME_IN_USE', message: 'the ejected volume is used by another VM; left active' }] }),
                },
                { target: '#cdrom.recordingDone' },
              ],
              'step.error': [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // anything else: the drive is empty, so the metadata stops naming the volume; fail
                { target: 'forgetVolume', actions: assign({ error: ({ event }) => ({ ...asError(event.error), code: 'TEARDOWN_FAILED' as const }) }) },
              ],
            },
          },
          forgetVolume: {
            entry: { type: 'editMetadata', params: { edits: 'removeEjectedSpec', failpoint: 'rollback' } },
            on: {
              'editMetadata.done': '#cdrom.recordingFailed',
              'step.error': { target: '#cdrom.recordingFailed', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'removing the ejected drive spec' } } },
            },
          },
        },
      },

      // VM with loaded CD, change CD.
      changing: {
        initial: 'begin',
        states: {
          begin: {
            entry: { type: 'editMetadata', params: { edits: 'begin', failpoint: 'metadata-begin' } },
            on: {
              'editMetadata.done': 'prepare',
              'step.error': [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                { target: '#cdrom.recordingFailed', actions: 'keepError' },
              ],
            },
          },
          prepare: {
            entry: 'prepareVolume',
            on: {
              'prepareVolume.done': { target: 'update', actions: assign({ prepared: ({ event }) => event.output }) },
              'step.error': [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: remove state="ejecting", remove the new drive spec (log errors), fail
                { target: 'undoSpecs', actions: 'keepError' },
              ],
            },
          },
          update: {
            entry: { type: 'updateDevice', params: { source: 'new' } },
            on: {
              'updateDevice.done': { target: 'finishLoading', actions: assign({ current: ({ context }) => context.requested }) },
              'step.error': [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: tear down the new volume, remove its spec, remove state="ejecting" (log errors), fail
                { target: 'teardownNew', actions: 'keepError' },
              ],
            },
          },
          teardownNew: {
            entry: { type: 'teardownVolume', params: { volume: 'new', failpoint: 'rollback' } },
            on: {
              'teardownVolume.done': 'undoSpecs',
              'step.error': { target: 'undoSpecs', actions: { type: 'warn', params: { code: 'TEARDOWN_FAILED', what: 'tearing down the new volume' } } },
            },
          },
          undoSpecs: {
            entry: { type: 'editMetadata', params: { edits: 'undoSpecs', failpoint: 'rollback' } },
            on: {
              'editMetadata.done': '#cdrom.recordingFailed',
              'step.error': { target: '#cdrom.recordingFailed', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'restoring the drive specs' } } },
            },
          },
          finishLoading: {
            entry: { type: 'editMetadata', params: { edits: 'clearLoading' } },
            on: {
              'editMetadata.done': 'teardownOld',
              // if failed: log the error and continue
              'step.error': { target: 'teardownOld', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'removing state="loading"' } } },
            },
          },
          teardownOld: {
            entry: { type: 'teardownVolume', params: { volume: 'old', failpoint: 'teardown' } },
            on: {
              'teardownVolume.done': [
                {
                  guard: ({ event }) => event.output === 'in-use',
                  target: '#cdrom.recordingDone',
                  actions: assign({ warnings: ({ context }) => [...context.warnings, { code: 'VOLUME_IN_USE', message: 'the old volume is used by another VM; left active' }] }),
                },
                { target: '#cdrom.recordingDone' },
              ],
              // if failed (e.g. timeout): log the error and continue
              'step.error': { target: '#cdrom.recordingDone', actions: { type: 'warn', params: { code: 'TEARDOWN_FAILED', what: 'tearing down the old volume' } } },
            },
          },
        },
      },

      recordingDone: {
        entry: ['stamp', { type: 'writeJournal', params: { record: 'completed' } }],
        on: {
          'writeJournal.done': 'finishing',
          'step.error': [
            { guard: 'retryable', target: 'retrying', actions: 'keepError' },
            { target: 'finishing', actions: { type: 'warn', params: { code: 'JOURNAL_FAILED', what: 'recording the command' } } },
          ],
        },
      },

      finishing: {
        entry: { type: 'editMetadata', params: { edits: 'finish', failpoint: 'metadata-finish' } },
        on: {
          'editMetadata.done': 'settled',
          // if failed: log the error and succeed
          'step.error': { target: 'settled', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'final metadata write' } } },
        },
      },

      recordingFailed: {
        entry: ['stamp', { type: 'writeJournal', params: { record: 'failed' } }],
        on: {
          'writeJournal.done': 'settled',
          'step.error': [
            // Unknown whether the record landed: retried (the flow was undone, so its retry
            // starts from the drive as it was), never answered unrecorded — a repeat of the
            // command would otherwise run it again and could end differently.
            { guard: 'retryable', target: 'retrying', actions: 'keepError' },
            { target: 'settled', actions: { type: 'warn', params: { code: 'JOURNAL_FAILED', what: 'recording the command' } } },
          ],
        },
      },

      failed: { always: 'recordingFailed' },

      settled: { entry: 'settleResult', always: { target: 'idle', actions: 'reset' } },
      retrying: { entry: 'settleRetry', always: { target: 'idle', actions: 'reset' } },
    },
  });
}

/** The fixed edits of the named writes; `begin` and `finish` depend on the flow. */
const EDITS = {
  clearLoading: [{ op: 'clear-state', state: 'loading' }],
  clearEjecting: [{ op: 'clear-state', state: 'ejecting' }],
  removeLoadingSpec: [{ op: 'remove', state: 'loading' }],
  removeEjectedSpec: [{ op: 'remove', state: 'ejecting' }],
  undoSpecs: [
    { op: 'remove', state: 'loading' },
    { op: 'clear-state', state: 'ejecting' },
  ],
} as const satisfies Record<Exclude<EditSet, 'begin' | 'finish'>, readonly MetadataEdit[]>;

/** The metadata edits of each named write, from the flow's context. */
function editsOf(set: EditSet, ctx: Context): readonly MetadataEdit[] {
  switch (set) {
    case 'begin':
      return beginEdits(ctx);
    case 'finish':
      return finishEdits(ctx);
    default:
      return EDITS[set];
  }
}

/** The flow's final metadata write: the one that removes `state`. */
function finishEdits(ctx: Context): readonly MetadataEdit[] {
  switch (ctx.action) {
    case 'load':
      return EDITS.clearLoading;
    case 'eject':
    case 'change':
      return EDITS.removeEjectedSpec;
    case 'none':
      return [];
  }
}

export type CdromMachine = ReturnType<typeof createCdromMachine>;
