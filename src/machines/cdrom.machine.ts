import { assign, emit, setup } from 'xstate';
import type { ChangeCdCommand } from '../contracts/schemas.js';
import { toCdromError, type ErrorInfo, type WarningInfo } from '../domain/errors.js';
import { isPdiv, sameMedia, type Media } from '../domain/media.js';
import type { DoneRecord, PendingRecord } from '../domain/metadata/journal.metadata.js';
import { actionFor, type Attempt, type ChangeAction, type ChangeResult } from '../domain/outcome.js';
import type { DriveSource, PreparedVolume, TeardownResult } from '../domain/ports.js';
import type { Activities, DriveRef, Inspection, MetadataEdit, RecoveryReport } from './cdrom.activities.js';
import { Deadlines, fromStep } from './step-actor.js';

/**
 * One CD-ROM (vmId, drive). Idle until told to EXECUTE a changeCD or to RECOVER; then it
 * walks the design page's flow for the action step by step — write the intent to the
 * metadata, act, commit — and every "if failed" branch exactly as written. It emits one
 * `settled` event per request and goes back to idle. No I/O: effects are the injected
 * activities, each invoked as a step with a deadline — a step that hangs fails with a
 * retryable TIMEOUT and takes the state's `onError` branches like any other failure.
 */

export type Settlement =
  | { readonly kind: 'result'; readonly result: ChangeResult; readonly replayed: boolean }
  | { readonly kind: 'retry'; readonly error: ErrorInfo; readonly attempt?: Attempt }
  | { readonly kind: 'recovered'; readonly report: RecoveryReport | null; readonly error: ErrorInfo | null };

export type CdromEvent = { type: 'EXECUTE'; command: ChangeCdCommand; startedAt: string } | { type: 'RECOVER' };
export type CdromEmitted = { type: 'settled'; settlement: Settlement };

export type CdromInput = DriveRef;

export interface CdromOptions {
  /** how long one step (one activity call) may take before it fails with TIMEOUT */
  readonly stepTimeoutMs: number;
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
  replayed: ChangeResult | null;
}

const asError = (err: unknown): ErrorInfo => toCdromError(err).toInfo();
/** The error of an invoked effect's error event (named guards and actions see any event). */
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
} satisfies Omit<Context, keyof DriveRef>;

export function createCdromMachine(activities: Activities, options: CdromOptions = { stepTimeoutMs: 60_000 }) {
  const deadlines = new Deadlines(options.stepTimeoutMs);
  return setup({
    types: {
      context: {} as Context,
      events: {} as CdromEvent,
      input: {} as CdromInput,
      emitted: {} as CdromEmitted,
    },
    actors: {
      inspect: fromStep<Inspection, DriveRef & { commandId: string | null }>('reading the drive and its metadata', deadlines, (input) => activities.inspect(input)),
      recover: fromStep<RecoveryReport, DriveRef>('recovering the drive', deadlines, (input) => activities.recover(input)),
      editMetadata: fromStep<void, Parameters<Activities['editMetadata']>[0]>('a metadata write', deadlines, (input) => activities.editMetadata(input)),
      writeJournal: fromStep<void, Parameters<Activities['writeJournal']>[0]>('a journal write', deadlines, (input) => activities.writeJournal(input)),
      prepareVolume: fromStep<PreparedVolume, { media: Media }>('preparing the volume', deadlines, (input) => activities.prepareVolume(input)),
      updateDevice: fromStep<void, DriveRef & { source: DriveSource | null }>('changing the media (updateDeviceFlags)', deadlines, (input) => activities.updateDevice(input)),
      teardownVolume: fromStep<TeardownResult, Parameters<Activities['teardownVolume']>[0]>('tearing down a volume', deadlines, (input) => activities.teardownVolume(input)),
    },
    guards: {
      /** infrastructure trouble, outcome unknown: retry instead of running the failure branch */
      retryable: ({ event }) => isRetryable(errorOf(event)),
    },
    actions: {
      /** keep the step's error: the flow fails with the original error */
      keepError: assign({ error: ({ event }) => asError(errorOf(event)) }),
      /** a failure the design page says to log and go on from */
      warn: assign(({ context, event }, params: { code: string; what: string }) => ({
        warnings: [...context.warnings, warn(params.code, errorOf(event), params.what)],
      })),
      settleResult: emit(({ context }) => ({
        type: 'settled' as const,
        settlement: { kind: 'result' as const, result: context.replayed ?? resultOf(context, context.error === null ? 'completed' : 'failed'), replayed: context.replayed !== null },
      })),
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
            })),
          },
          RECOVER: 'recovering',
        },
      },

      recovering: {
        invoke: {
          src: 'recover',
          input: ({ context }) => ({ vmId: context.vmId, drive: context.drive }),
          onDone: {
            target: 'idle',
            actions: emit(({ event }) => ({ type: 'settled' as const, settlement: { kind: 'recovered' as const, report: event.output, error: null } })),
          },
          onError: {
            target: 'idle',
            actions: emit(({ event }) => ({ type: 'settled' as const, settlement: { kind: 'recovered' as const, report: null, error: asError(event.error) } })),
          },
        },
      },

      inspecting: {
        invoke: {
          src: 'inspect',
          input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, commandId: context.command?.commandId ?? null }),
          onDone: [
            {
              // Seen before and finished: answer the same, touch nothing.
              guard: ({ event }) => event.output.record?.status === 'done',
              target: 'settled',
              actions: assign(({ event }) => ({ replayed: (event.output.record as DoneRecord).result })),
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
                return { action: rec.action, previous: rec.previous, current: event.output.current };
              }),
            },
            {
              target: 'deciding',
              actions: assign(({ event, context }) => {
                const same = sameMedia(event.output.current, context.requested);
                return {
                  inspection: event.output,
                  previous: event.output.current,
                  current: event.output.current,
                  action: actionFor(event.output.current, context.requested, same),
                };
              }),
            },
          ],
          onError: [
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
        invoke: {
          src: 'recover',
          input: ({ context }) => ({ vmId: context.vmId, drive: context.drive }),
          onDone: { target: 'inspecting', actions: assign({ recovered: true }) },
          onError: [
            { guard: 'retryable', target: 'retrying', actions: 'keepError' },
            { target: 'inspecting', actions: assign({ recovered: true }) },
          ],
        },
      },

      deciding: {
        always: [
          { guard: ({ context }) => context.action === 'none', target: 'recordingDone' },
          { target: 'journaling' },
        ],
      },

      journaling: {
        invoke: {
          src: 'writeJournal',
          input: ({ context }) => ({
            vmId: context.vmId,
            drive: context.drive,
            record: {
              commandId: (context.command as ChangeCdCommand).commandId,
              drive: context.drive,
              action: context.action,
              previous: context.previous,
              requested: context.requested,
              startedAt: context.startedAt,
            },
          }),
          onDone: [
            { guard: ({ context }) => context.action === 'eject', target: 'ejecting' },
            { guard: ({ context }) => context.action === 'load', target: 'loading' },
            { target: 'changing' },
          ],
          onError: [
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
            invoke: {
              src: 'editMetadata',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, edits: beginEdits(context), failpoint: 'metadata-begin' as const }),
              onDone: 'prepare',
              onError: [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                { target: '#cdrom.recordingFailed', actions: 'keepError' },
              ],
            },
          },
          prepare: {
            invoke: {
              src: 'prepareVolume',
              input: ({ context }) => ({ media: context.requested as Media }),
              onDone: { target: 'update', actions: assign({ prepared: ({ event }) => event.output }) },
              onError: [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: remove drive spec (log errors), fail the flow with original error
                { target: 'removeSpec', actions: 'keepError' },
              ],
            },
          },
          update: {
            invoke: {
              src: 'updateDevice',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, source: sourceOf(context.prepared as PreparedVolume) }),
              onDone: { target: '#cdrom.recordingDone', actions: assign({ current: ({ context }) => context.requested }) },
              onError: [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: tear down the volume (log error), remove the drive spec (log error), fail
                { target: 'teardownNew', actions: 'keepError' },
              ],
            },
          },
          teardownNew: {
            invoke: {
              src: 'teardownVolume',
              input: ({ context }) => ({ media: context.requested as Media }),
              onDone: 'removeSpec',
              onError: { target: 'removeSpec', actions: { type: 'warn', params: { code: 'TEARDOWN_FAILED', what: 'tearing down the new volume' } } },
            },
          },
          removeSpec: {
            invoke: {
              src: 'editMetadata',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, edits: [{ op: 'remove' as const, state: 'loading' as const }] }),
              onDone: '#cdrom.recordingFailed',
              onError: { target: '#cdrom.recordingFailed', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'removing the loading drive spec' } } },
            },
          },
        },
      },

      // VM with loaded CD, eject CD.
      ejecting: {
        initial: 'begin',
        states: {
          begin: {
            invoke: {
              src: 'editMetadata',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, edits: beginEdits(context), failpoint: 'metadata-begin' as const }),
              onDone: 'update',
              onError: [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                { target: '#cdrom.recordingFailed', actions: 'keepError' },
              ],
            },
          },
          update: {
            invoke: {
              src: 'updateDevice',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, source: null }),
              onDone: { target: 'teardown', actions: assign({ current: null }) },
              onError: [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: remove the state attribute (log error), fail with original error
                { target: 'clearState', actions: 'keepError' },
              ],
            },
          },
          clearState: {
            invoke: {
              src: 'editMetadata',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, edits: [{ op: 'clear-state' as const, state: 'ejecting' as const }] }),
              onDone: '#cdrom.recordingFailed',
              onError: { target: '#cdrom.recordingFailed', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'removing state="ejecting"' } } },
            },
          },
          teardown: {
            invoke: {
              src: 'teardownVolume',
              input: ({ context }) => ({ media: context.previous as Media, failpoint: 'teardown' as const }),
              onDone: [
                {
                  // used by another VM: log and succeed
                  guard: ({ event }) => event.output === 'in-use',
                  target: '#cdrom.recordingDone',
                  actions: assign({ warnings: ({ context }) => [...context.warnings, { code: 'VOLUME_IN_USE', message: 'the ejected volume is used by another VM; left active' }] }),
                },
                { target: '#cdrom.recordingDone' },
              ],
              onError: [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // anything else: the drive is empty, so the metadata stops naming the volume; fail
                { target: 'forgetVolume', actions: assign({ error: ({ event }) => ({ ...asError(event.error), code: 'TEARDOWN_FAILED' as const }) }) },
              ],
            },
          },
          forgetVolume: {
            invoke: {
              src: 'editMetadata',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, edits: [{ op: 'remove' as const, state: 'ejecting' as const }] }),
              onDone: '#cdrom.recordingFailed',
              onError: { target: '#cdrom.recordingFailed', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'removing the ejected drive spec' } } },
            },
          },
        },
      },

      // VM with loaded CD, change CD.
      changing: {
        initial: 'begin',
        states: {
          begin: {
            invoke: {
              src: 'editMetadata',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, edits: beginEdits(context), failpoint: 'metadata-begin' as const }),
              onDone: 'prepare',
              onError: [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                { target: '#cdrom.recordingFailed', actions: 'keepError' },
              ],
            },
          },
          prepare: {
            invoke: {
              src: 'prepareVolume',
              input: ({ context }) => ({ media: context.requested as Media }),
              onDone: { target: 'update', actions: assign({ prepared: ({ event }) => event.output }) },
              onError: [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: remove state="ejecting", remove the new drive spec (log errors), fail
                { target: 'undoSpecs', actions: 'keepError' },
              ],
            },
          },
          update: {
            invoke: {
              src: 'updateDevice',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, source: sourceOf(context.prepared as PreparedVolume) }),
              onDone: { target: 'finishLoading', actions: assign({ current: ({ context }) => context.requested }) },
              onError: [
                { guard: 'retryable', target: '#cdrom.retrying', actions: 'keepError' },
                // if failed: tear down the new volume, remove its spec, remove state="ejecting" (log errors), fail
                { target: 'teardownNew', actions: 'keepError' },
              ],
            },
          },
          teardownNew: {
            invoke: {
              src: 'teardownVolume',
              input: ({ context }) => ({ media: context.requested as Media }),
              onDone: 'undoSpecs',
              onError: { target: 'undoSpecs', actions: { type: 'warn', params: { code: 'TEARDOWN_FAILED', what: 'tearing down the new volume' } } },
            },
          },
          undoSpecs: {
            invoke: {
              src: 'editMetadata',
              input: ({ context }) => ({
                vmId: context.vmId,
                drive: context.drive,
                edits: [
                  { op: 'remove' as const, state: 'loading' as const },
                  { op: 'clear-state' as const, state: 'ejecting' as const },
                ],
              }),
              onDone: '#cdrom.recordingFailed',
              onError: { target: '#cdrom.recordingFailed', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'restoring the drive specs' } } },
            },
          },
          finishLoading: {
            invoke: {
              src: 'editMetadata',
              input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, edits: [{ op: 'clear-state' as const, state: 'loading' as const }] }),
              onDone: 'teardownOld',
              // if failed: log the error and continue
              onError: { target: 'teardownOld', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'removing state="loading"' } } },
            },
          },
          teardownOld: {
            invoke: {
              src: 'teardownVolume',
              input: ({ context }) => ({ media: context.previous as Media, failpoint: 'teardown' as const }),
              onDone: [
                {
                  guard: ({ event }) => event.output === 'in-use',
                  target: '#cdrom.recordingDone',
                  actions: assign({ warnings: ({ context }) => [...context.warnings, { code: 'VOLUME_IN_USE', message: 'the old volume is used by another VM; left active' }] }),
                },
                { target: '#cdrom.recordingDone' },
              ],
              // if failed (e.g. timeout): log the error and continue
              onError: { target: '#cdrom.recordingDone', actions: { type: 'warn', params: { code: 'TEARDOWN_FAILED', what: 'tearing down the old volume' } } },
            },
          },
        },
      },

      recordingDone: {
        invoke: {
          src: 'writeJournal',
          input: ({ context }) => ({
            vmId: context.vmId,
            drive: context.drive,
            record: {
              commandId: (context.command as ChangeCdCommand).commandId,
              drive: context.drive,
              result: resultOf(context, 'completed'),
              startedAt: context.startedAt,
            },
          }),
          onDone: 'finishing',
          onError: [
            { guard: 'retryable', target: 'retrying', actions: 'keepError' },
            { target: 'finishing', actions: { type: 'warn', params: { code: 'JOURNAL_FAILED', what: 'recording the command' } } },
          ],
        },
      },

      finishing: {
        invoke: {
          src: 'editMetadata',
          input: ({ context }) => ({ vmId: context.vmId, drive: context.drive, edits: finishEdits(context), failpoint: 'metadata-finish' as const }),
          onDone: 'settled',
          // if failed: log the error and succeed
          onError: { target: 'settled', actions: { type: 'warn', params: { code: 'METADATA_FAILED', what: 'final metadata write' } } },
        },
      },

      recordingFailed: {
        invoke: {
          src: 'writeJournal',
          input: ({ context }) => ({
            vmId: context.vmId,
            drive: context.drive,
            record: {
              commandId: (context.command as ChangeCdCommand).commandId,
              drive: context.drive,
              result: resultOf(context, 'failed'),
              startedAt: context.startedAt,
            },
          }),
          onDone: 'settled',
          onError: { target: 'settled', actions: { type: 'warn', params: { code: 'JOURNAL_FAILED', what: 'recording the command' } } },
        },
      },

      failed: { always: 'recordingFailed' },

      settled: { entry: 'settleResult', always: { target: 'idle', actions: 'reset' } },
      retrying: { entry: 'settleRetry', always: { target: 'idle', actions: 'reset' } },
    },
  });
}

/** The flow's final metadata write: the one that removes `state`. */
function finishEdits(ctx: Context): MetadataEdit[] {
  switch (ctx.action) {
    case 'load':
      return [{ op: 'clear-state', state: 'loading' }];
    case 'eject':
      return [{ op: 'remove', state: 'ejecting' }];
    case 'change':
      return [{ op: 'remove', state: 'ejecting' }];
    case 'none':
      return [];
  }
}

export type CdromMachine = ReturnType<typeof createCdromMachine>;
