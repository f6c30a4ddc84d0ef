import { writeFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ResultEvent } from '../../src/contracts/schemas.js';
import type { Pdiv } from '../../src/domain/media.js';
import type { Failpoint } from '../../src/infra/failpoints.js';
import { canUseLoopLvm } from '../support/storage.js';
import { TestVms, type TestVm } from '../support/vm.js';
import {
  E2eStorage,
  Engine,
  acquireE2eLock,
  compileWorker,
  changeCd,
  observeDrive,
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
 * flow, the worker is started with `<point>:crash`, exits with 137 at that point, and a
 * worker started without failpoints must finish the job — drive holding the new media
 * (the command is redelivered; a change already in the drive is not done twice), no
 * `state` left, exactly the drive's volume active, one result event for the commandId
 * (two identical ones when the first was already out before the crash). Then the same
 * with `<point>:error`: `failed` with the previous media kept, or `completed` with a
 * warning where the design page says "log and succeed", and nothing leaked once
 * reconciliation ran. One VM and one storage domain serve every case; each case starts
 * from a drive set up through the adapters.
 *
 * E2E_MATRIX_REPORT=<file> writes what each case saw (for the record).
 */

type Flow = 'load' | 'eject' | 'change';

interface FlowSpec {
  readonly from: (s: E2eStorage) => Pdiv | null;
  readonly to: (s: E2eStorage) => Pdiv | null;
  readonly points: readonly Failpoint[];
}

const FLOWS: Record<Flow, FlowSpec> = {
  load: { from: () => null, to: (s) => s.pdiv(0), points: ['metadata-begin', 'prepare', 'libvirt-update', 'metadata-finish', 'before-ack'] },
  eject: { from: (s) => s.pdiv(0), to: () => null, points: ['metadata-begin', 'libvirt-update', 'teardown', 'metadata-finish', 'before-ack'] },
  change: { from: (s) => s.pdiv(0), to: (s) => s.pdiv(1), points: ['metadata-begin', 'prepare', 'libvirt-update', 'teardown', 'metadata-finish', 'before-ack'] },
};
const FLOW_NAMES = Object.keys(FLOWS) as Flow[];

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
    default:
      throw new Error(`no ${point}:error case`);
  }
}

// `before-ack:error` is refused by the configuration: the ack has no step to fail.
const ERROR_POINTS: readonly Failpoint[] = ['metadata-begin', 'prepare', 'libvirt-update', 'teardown', 'metadata-finish'];

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
    env = { hostId, storageRoot: storage.root, entry: compiled.entry };
  }, 180_000);

  afterAll(async () => {
    const errors: unknown[] = [];
    for (const w of workers) await w.kill();
    await engine?.close();
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

  describe('crash (<point>:crash, exit 137, restart without failpoints)', () => {
    for (const flow of FLOW_NAMES) {
      for (const point of FLOWS[flow].points) {
        it(`${flow} flow, crash at ${point}: the restarted worker finishes it once`, async () => {
          const from = FLOWS[flow].from(storage);
          const to = FLOWS[flow].to(storage);
          const t0 = Date.now();
          const marks: string[] = [];
          const mark = (what: string): void => {
            marks.push(`${what}@${Date.now() - t0}`);
          };
          await setDrive(adapters as Adapters, storage, vm.uuid, from);
          mark('reset');
          const mine: WorkerProcess[] = [];
          try {
            const crashing = await start(`${point}:crash`);
            mark('ready');
            mine.push(crashing);
            const commandId = await send(to);
            const exit = await Promise.race([crashing.exited, new Promise<null>((r) => setTimeout(() => r(null), 60_000))]);
            expect(exit, crashing.logs().slice(-3000)).toEqual({ code: 137, signal: null });
            mark('crashed');
            // Nothing is published before the flow's end; the event is out only before the ack.
            if (point === 'before-ack') await (engine as Engine).waitFor(commandId, 1);
            const afterCrash = await observeDrive(vm.name, storage);
            const eventsBefore = (engine as Engine).eventsFor(commandId).length;
            expect(eventsBefore).toBe(point === 'before-ack' ? 1 : 0);

            const restarted = await start();
            mine.push(restarted);
            mark('restarted');
            const events = await (engine as Engine).waitFor(commandId, eventsBefore + 1);
            mark('event');
            await stop(restarted);
            mark('stopped');

            const final = await observeDrive(vm.name, storage);
            const recovery = restarted
              .logs()
              .split('\n')
              .filter((l) => l.includes('"recovered drive"') && l.includes(vm.uuid))
              .map((l) => /"row":"([^"]+)"/.exec(l)?.[1] ?? '?');
            report.push({ mode: 'crash', flow, point, exit, marks: marks.join(' '), afterCrash: afterCrash.summary, recovery, final: final.summary, events: events.map((e) => `${e.type}/${e.action}`) });

            expect(final, final.summary).toMatchObject(settledAs(storage, to));
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
        worker = await start(`${point}:error`);
      }, 120_000);
      afterAll(async () => {
        if (worker !== null) await stop(worker);
      }, 60_000);

      for (const flow of FLOW_NAMES) {
        if (!FLOWS[flow].points.includes(point)) continue;
        const want = errorExpectation(flow, point);
        const title = `${flow} flow, error at ${point}: ${want.outcome}${want.code ? ` ${want.code}` : ''}${want.warning ? ` with warning ${want.warning}` : ''}, ${want.changed ? 'new' : 'previous'} media${want.leftover ? `, ${want.leftover} reconciled` : ''}`;
        it(title, async () => {
          const from = FLOWS[flow].from(storage);
          const to = FLOWS[flow].to(storage);
          await setDrive(adapters as Adapters, storage, vm.uuid, from);
          const commandId = await send(to);
          const [event] = await (engine as Engine).waitFor(commandId, 1);
          const e = event as ResultEvent;
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
            const r = await runCli(env, want.leftover === 'orphan volume' ? ['recover'] : ['recover', '--vm', vm.uuid]);
            expect(r.code, r.stdout + r.stderr).toBe(0);
            reconciled = r.stdout.trim().split('\n').slice(1).join(' | ');
          }
          const final = await observeDrive(vm.name, storage);
          report.push({ mode: 'error', flow, point, event: `${e.type}/${e.action}${e.error ? ` ${e.error.code}` : ''}${e.warnings.length > 0 ? ` warnings=${e.warnings.map((w) => w.code).join(',')}` : ''}`, seen: seen.summary, reconciled, final: final.summary });
          expect(final, final.summary).toMatchObject(settledAs(storage, holds));
        }, 120_000);
      }
    });
  }
});
