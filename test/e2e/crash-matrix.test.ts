import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ResultEvent } from '../../src/contracts/schemas.js';
import type { Pdiv } from '../../src/domain/media.js';
import type { Failpoint } from '../../src/infra/failpoints.js';
import { canUseLoopLvm } from '../support/storage.js';
import { TrayWatch } from '../support/tray.js';
import { TestVms, type TestVm } from '../support/vm.js';
import {
  E2eStorage,
  Engine,
  acquireE2eLock,
  compileWorker,
  changeCd,
  observeDrive,
  onlyDomains,
  openAdapters,
  runCli,
  setDrive,
  settledAs,
  startWorkerProcess,
  uniqueHostId,
  type Adapters,
  type WorkerEnv,
  type WorkerProcess,
} from '../support/e2e.js';

/**
 * Crash safety on the real stack (CONTRACT 7): for each flow × each failpoint of that
 * flow, the worker is started with `<point>:crash@<vm>`, exits with 137 at that point, and
 * a worker started without failpoints must finish the job — drive holding the new media
 * (the command is redelivered; a change already in the drive is not done twice), no
 * `state` left, exactly the drive's volume active, one result event for the commandId
 * (two identical ones when the first was already out before the crash). The points are
 * the steps of the flow, the journal's two writes (`journal-pending`, `journal-done`),
 * and `rollback`: `<e>:error,rollback:crash` for each error `<e>` that starts an "if
 * failed" branch of the flow, crashing right after its first undo step. "Not done twice"
 * is counted, not inferred from the end state: the VM must have seen exactly one media
 * change (libvirt tray-change events, `TrayWatch`) over the crash and the restart.
 * Then the same with `<point>:error`: `failed` with the previous media kept, or
 * `completed` with a warning where the design page says "log and succeed", and nothing
 * leaked once reconciliation ran. One VM and one storage domain serve every case; each
 * case starts from a drive set up through the adapters. The workers and the `recover`
 * runs are scoped to that VM (CDROM_DOMAIN_FILTER, `--vm`) and to the test's storage root.
 *
 * E2E_MATRIX_REPORT=<file> writes what each case saw (for the record).
 */

type Flow = 'load' | 'eject' | 'change';

interface FlowSpec {
  readonly from: (s: E2eStorage) => Pdiv | null;
  readonly to: (s: E2eStorage) => Pdiv | null;
  /** the flow's steps, in order */
  readonly points: readonly Failpoint[];
  /** the steps whose failure starts an "if failed" branch with an undo step (for `rollback`) */
  readonly undone: readonly Failpoint[];
}

const FLOWS: Record<Flow, FlowSpec> = {
  load: { from: () => null, to: (s) => s.pdiv(0), points: ['metadata-begin', 'prepare', 'libvirt-update', 'metadata-finish', 'before-ack'], undone: ['prepare', 'libvirt-update'] },
  eject: { from: (s) => s.pdiv(0), to: () => null, points: ['metadata-begin', 'libvirt-update', 'teardown', 'metadata-finish', 'before-ack'], undone: ['libvirt-update', 'teardown'] },
  change: { from: (s) => s.pdiv(0), to: (s) => s.pdiv(1), points: ['metadata-begin', 'prepare', 'libvirt-update', 'teardown', 'metadata-finish', 'before-ack'], undone: ['prepare', 'libvirt-update'] },
};
const FLOW_NAMES = Object.keys(FLOWS) as Flow[];

/** One crash case: the failpoints (each scoped to the test's VM), and whether the drive already holds the new media when the worker dies. */
interface CrashCase {
  readonly name: string;
  readonly spec: (vmId: string) => string;
  readonly changedAtCrash: boolean;
  /** the result event is already out when the worker dies */
  readonly eventOut: boolean;
}

/** Steps after which the new media is in the drive. */
const AFTER_CHANGE: readonly Failpoint[] = ['libvirt-update', 'teardown', 'metadata-finish', 'before-ack', 'journal-done'];

function crashCases(flow: Flow): CrashCase[] {
  const f = FLOWS[flow];
  const single = (point: Failpoint): CrashCase => ({
    name: `crash at ${point}`,
    spec: (vm) => `${point}:crash@${vm}`,
    changedAtCrash: AFTER_CHANGE.includes(point),
    eventOut: point === 'before-ack',
  });
  // journal-pending comes before metadata-begin, journal-done after the flow's last step but the final write.
  const [first, ...rest] = f.points;
  const steps: Failpoint[] = ['journal-pending', first as Failpoint, ...rest.filter((p) => p !== 'metadata-finish' && p !== 'before-ack'), 'journal-done', 'metadata-finish', 'before-ack'];
  return [
    ...steps.map(single),
    ...f.undone.map((e) => ({
      name: `crash at rollback after ${e}:error`,
      spec: (vm: string) => `${e}:error@${vm},rollback:crash@${vm}`,
      // the eject whose teardown failed has emptied the drive; every other branch undoes before the change
      changedAtCrash: flow === 'eject' && e === 'teardown',
      eventOut: false,
    })),
  ];
}

/** What `<point>:error` must end in, per flow (design page "if failed" branches). */
interface ErrorExpectation {
  readonly outcome: 'completed' | 'failed';
  readonly code?: string;
  readonly warning?: string;
  /** the drive holds the new media (else the previous) */
  readonly changed: boolean;
  /** leftovers that reconciliation (`cdrom-worker recover`) must clean up */
  readonly leftover?: 'orphan volume' | 'state in metadata';
}

function errorExpectation(flow: Flow, point: Failpoint): ErrorExpectation {
  switch (point) {
    case 'metadata-begin':
      return { outcome: 'failed', code: 'INTERNAL', changed: false };
    case 'prepare':
      return { outcome: 'failed', code: 'PREPARE_FAILED', changed: false };
    case 'libvirt-update':
      return { outcome: 'failed', code: 'CHANGE_FAILED', changed: false };
    case 'teardown':
      // eject: "anything else except device in use: … re-throw and fail" (the drive is empty);
      // change: "log the error and continue".
      return flow === 'eject'
        ? { outcome: 'failed', code: 'TEARDOWN_FAILED', changed: true, leftover: 'orphan volume' }
        : { outcome: 'completed', warning: 'TEARDOWN_FAILED', changed: true, leftover: 'orphan volume' };
    case 'metadata-finish':
      return { outcome: 'completed', warning: 'METADATA_FAILED', changed: true, leftover: 'state in metadata' };
    case 'journal-pending':
      // the pending record is written before anything else: nothing was changed
      return { outcome: 'failed', code: 'INTERNAL', changed: false };
    case 'journal-done':
      // the change is made; a journal that cannot record it is logged, the flow finishes
      return { outcome: 'completed', warning: 'JOURNAL_FAILED', changed: true };
    default:
      throw new Error(`no ${point}:error case`);
  }
}

// `before-ack:error` and `rollback:error` are refused by the configuration: no step to fail.
const ERROR_POINTS: readonly Failpoint[] = ['journal-pending', 'metadata-begin', 'prepare', 'libvirt-update', 'teardown', 'journal-done', 'metadata-finish'];
/** Points every flow passes through besides its own steps. */
const JOURNAL_POINTS: readonly Failpoint[] = ['journal-pending', 'journal-done'];

const actionOf = (flow: Flow): string => flow;

describe.skipIf(!canUseLoopLvm())('crash matrix (real RabbitMQ, libvirt/QEMU, loop-backed LVM, worker process)', () => {
  const hostId = uniqueHostId('crash');
  const report: Record<string, unknown>[] = [];
  let release: (() => Promise<void>) | null = null;
  let compiled: { entry: string; remove: () => Promise<void> } | null = null;
  let storage: E2eStorage;
  let vms: TestVms | null = null;
  let vm: TestVm;
  let adapters: Adapters | null = null;
  let engine: Engine | null = null;
  let tray: TrayWatch | null = null;
  let env: WorkerEnv;
  const workers: WorkerProcess[] = [];

  async function start(failpoint?: string): Promise<WorkerProcess> {
    const w = await startWorkerProcess({ ...env, failpoint });
    workers.push(w);
    return w;
  }

  async function stop(w: WorkerProcess): Promise<void> {
    const exit = await w.stop();
    expect(exit, w.logs().slice(-3000)).toEqual({ code: 0, signal: null });
  }

  beforeAll(async () => {
    release = await acquireE2eLock();
    compiled = await compileWorker();
    storage = await E2eStorage.create(3);
    vms = await TestVms.open();
    vm = await vms.create();
    adapters = await openAdapters(storage);
    engine = await Engine.open(hostId);
    tray = await TrayWatch.open([vm.uuid]);
    env = { hostId, storageRoot: storage.root, entry: compiled.entry, domainFilter: onlyDomains(vm.name) };
  }, 180_000);

  afterAll(async () => {
    const errors: unknown[] = [];
    for (const w of workers) await w.kill();
    await engine?.close();
    await tray?.close().catch((err: unknown) => errors.push(err));
    await adapters?.hypervisor.close();
    await vms?.cleanup().catch((err: unknown) => errors.push(err));
    await storage?.remove().catch((err: unknown) => errors.push(err));
    await compiled?.remove();
    await release?.();
    const file = process.env['E2E_MATRIX_REPORT'];
    if (file) writeFileSync(file, JSON.stringify(report, null, 2));
    if (errors.length > 0) throw new AggregateError(errors, 'end-to-end cleanup failed');
  }, 120_000);

  async function send(media: Pdiv | null): Promise<string> {
    const cmd = changeCd(vm.uuid, media);
    await (engine as Engine).send(cmd);
    return cmd.commandId;
  }

  describe('crash (<point>:crash@<vm>, exit 137, restart without failpoints)', () => {
    for (const flow of FLOW_NAMES) {
      for (const c of crashCases(flow)) {
        it(`${flow} flow, ${c.name}: the restarted worker finishes it, the VM sees one media change`, async () => {
          const from = FLOWS[flow].from(storage);
          const to = FLOWS[flow].to(storage);
          const t0 = Date.now();
          const marks: string[] = [];
          const mark = (what: string): void => {
            marks.push(`${what}@${Date.now() - t0}`);
          };
          await setDrive(adapters as Adapters, storage, vm.uuid, from);
          await (tray as TrayWatch).settle();
          const changesBefore = (tray as TrayWatch).changes(vm.uuid);
          mark('reset');
          const mine: WorkerProcess[] = [];
          try {
            const crashing = await start(c.spec(vm.uuid));
            mark('ready');
            mine.push(crashing);
            const commandId = await send(to);
            const exit = await Promise.race([crashing.exited, new Promise<null>((r) => setTimeout(() => r(null), 60_000))]);
            expect(exit, crashing.logs().slice(-3000)).toEqual({ code: 137, signal: null });
            mark('crashed');
            // Nothing is published before the flow's end; the event is out only before the ack.
            if (c.eventOut) await (engine as Engine).waitFor(commandId, 1);
            const afterCrash = await observeDrive(vm.name, storage);
            const heldAtCrash = c.changedAtCrash ? to : from;
            expect(afterCrash.source, afterCrash.summary).toBe(heldAtCrash === null ? null : storage.linkPath(heldAtCrash));
            const eventsBefore = (engine as Engine).eventsFor(commandId).length;
            expect(eventsBefore).toBe(c.eventOut ? 1 : 0);

            const restarted = await start();
            mine.push(restarted);
            mark('restarted');
            const events = await (engine as Engine).waitFor(commandId, eventsBefore + 1);
            mark('event');
            await stop(restarted);
            mark('stopped');
            await (tray as TrayWatch).settle();
            const changes = (tray as TrayWatch).changes(vm.uuid) - changesBefore;

            const final = await observeDrive(vm.name, storage);
            const recovery = restarted
              .logs()
              .split('\n')
              .filter((l) => l.includes('"recovered drive"') && l.includes(vm.uuid))
              .map((l) => /"row":"([^"]+)"/.exec(l)?.[1] ?? '?');
            report.push({ mode: 'crash', flow, case: c.name, exit, marks: marks.join(' '), afterCrash: afterCrash.summary, recovery, final: final.summary, changes, events: events.map((e) => `${e.type}/${e.action}`) });

            expect(final, final.summary).toMatchObject(settledAs(storage, to));
            // Done once: the change made before the crash is not made again after it.
            expect(changes, 'media changes the VM saw (tray-change events)').toBe(1);
            const all = (engine as Engine).eventsFor(commandId);
            expect(all).toHaveLength(eventsBefore + 1);
            for (const e of all) {
              expect(e).toMatchObject({ type: 'changeCD.completed', commandId, vmId: vm.uuid, drive: 'sdc', action: actionOf(flow), previous: from, current: to, error: null });
            }
          } finally {
            // A case that failed half way must not leave a consumer on the queue for the next.
            for (const w of mine) await w.kill();
          }
        }, 120_000);
      }
    }
  });

  for (const point of ERROR_POINTS) {
    describe(`error at ${point} (<point>:error, one worker for the flows)`, () => {
      let worker: WorkerProcess | null = null;
      beforeAll(async () => {
        worker = await start(`${point}:error@${vm.uuid}`);
      }, 120_000);
      afterAll(async () => {
        if (worker !== null) await stop(worker);
      }, 60_000);

      for (const flow of FLOW_NAMES) {
        if (!FLOWS[flow].points.includes(point) && !JOURNAL_POINTS.includes(point)) continue;
        const want = errorExpectation(flow, point);
        const title = `${flow} flow, error at ${point}: ${want.outcome}${want.code ? ` ${want.code}` : ''}${want.warning ? ` with warning ${want.warning}` : ''}, ${want.changed ? 'new' : 'previous'} media${want.leftover ? `, ${want.leftover} reconciled` : ''}`;
        it(title, async () => {
          const from = FLOWS[flow].from(storage);
          const to = FLOWS[flow].to(storage);
          await setDrive(adapters as Adapters, storage, vm.uuid, from);
          let event: ResultEvent | undefined;
          const changes = await (tray as TrayWatch).count(vm.uuid, async () => {
            const commandId = await send(to);
            [event] = await (engine as Engine).waitFor(commandId, 1);
          });
          const e = event as ResultEvent;
          expect(changes, 'media changes the VM saw (tray-change events)').toBe(want.changed ? 1 : 0);
          const holds = want.changed ? to : from;
          const seen = await observeDrive(vm.name, storage);

          expect(e).toMatchObject({ type: `changeCD.${want.outcome}`, action: actionOf(flow), previous: from, current: holds });
          if (want.code !== undefined) expect(e.error).toMatchObject({ code: want.code });
          else expect(e.error).toBeNull();
          if (want.warning !== undefined) expect(e.warnings.map((w) => w.code)).toContain(want.warning);
          expect(seen.source).toBe(holds === null ? null : storage.linkPath(holds));

          let reconciled: string | null = null;
          if (want.leftover !== undefined) {
            // The design page's "log and succeed" leaves this for reconciliation.
            expect(seen, seen.summary).not.toMatchObject(settledAs(storage, holds));
            // Only this test's VM: `--vm`. An orphan volume is no drive's, so `--vm` leaves it;
            // the whole-host pass that reaps it is scoped by CDROM_DOMAIN_FILTER (this VM) and
            // by the storage root (only volumes with this test's links count).
            const r = await runCli(env, ['recover', '--vm', vm.uuid]);
            expect(r.code, r.stdout + r.stderr).toBe(0);
            reconciled = r.stdout.trim().split('\n').slice(1).join(' | ');
            if (want.leftover === 'orphan volume') {
              const mid = await observeDrive(vm.name, storage);
              expect(mid.active, mid.summary).toContain(from?.volumeID);
              const host = await runCli(env, ['recover']);
              expect(host.code, host.stdout + host.stderr).toBe(0);
              expect(host.stdout).toContain(`orphan volume torn down: ${from?.domainID}/${from?.imageID}/${from?.volumeID}`);
              reconciled += ` | ${host.stdout.trim().split('\n').slice(1).join(' | ')}`;
            }
          }
          const final = await observeDrive(vm.name, storage);
          report.push({ mode: 'error', flow, point, changes, event: `${e.type}/${e.action}${e.error ? ` ${e.error.code}` : ''}${e.warnings.length > 0 ? ` warnings=${e.warnings.map((w) => w.code).join(',')}` : ''}`, seen: seen.summary, reconciled, final: final.summary });
          expect(final, final.summary).toMatchObject(settledAs(storage, holds));
        }, 120_000);
      }
    });
  }
});
