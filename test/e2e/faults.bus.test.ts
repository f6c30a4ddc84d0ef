import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ResultEvent } from '../../src/contracts/schemas.js';
import { commandsQueue } from '../../src/consumers/topology.js';
import type { Media, Pdiv } from '../../src/domain/media.js';
import { canUseLoopLvm } from '../support/storage.js';
import { TrayWatch } from '../support/tray.js';
import { TestVms, type TestVm } from '../support/vm.js';
import { E2eStorage, acquireE2eLock, changeCd, compileWorker, observeDrive, onlyDomains, openAdapters, settledAs, sleep, startWorkerProcess, uniqueHostId, waitUntil, type ExitStatus, type WorkerProcess } from '../support/e2e.js';
import { emptyDrives, eventProblems, type Sent } from '../support/faults.js';
import { PrivateBroker, type ArmedFault, type FaultReport } from '../support/bus-faults.js';
import { BusEngine, httpStatus, messageIdProblems, repeatCounts, repeatProblems } from '../support/bus-engine.js';

/**
 * CONTRACT 9 for the broker, on the real stack: the worker's connection closed
 * (`close_connection`) or the broker's application restarted (`stop_app`/`start_app`) in
 * the middle of a burst, the journal answering redeliveries and re-sends through an
 * outage, two workers for one host (one consumes, the other stands by and takes over), a
 * poison message that crashes the worker again and again, and SIGTERM mid-burst.
 *
 * Everything runs against a PRIVATE one-node RabbitMQ (scripts/rabbitmq-cluster.sh, a
 * free port): its faults never reach the test files on 127.0.0.1:5672. Faults are armed
 * ahead of time and fired from the node itself (test/support/bus-faults.ts), so they land
 * where the test aims, not ~0.5 s later when a fresh `rabbitmqctl` would get there; each
 * case checks that the fault did land mid-burst (commands unacknowledged at that moment,
 * events after it). Two VMs on one block storage domain (loop-backed LVM) and the node
 * serve every case; each case has its own host id, queues and worker processes, and both
 * drives empty at its start. What the engine sees is checked as in faults.libvirt (one
 * final outcome per command, each drive's events chaining in publication order), plus:
 * every repeat of a commandId is the whole first event again, with `message_id` =
 * commandId; the media changes each VM saw (libvirt tray events) are exactly the
 * commands' non-`none` actions — a redelivery is never executed again.
 *
 * BUSFAULTS_LOG_DIR=<dir> keeps each case's worker logs and a summary there.
 */

const LOG_DIR = process.env['BUSFAULTS_LOG_DIR'];
/** node name prefix of the private broker (distinct from the cluster tests' ones) */
const NODE_PREFIX = process.env['CDW_BUSFAULTS_PREFIX'] ?? 'cdwbus';
const BASE_ENV = { CDROM_RETRY_BASE_MS: '200', CDROM_RETRY_MAX_MS: '1000' };

describe.skipIf(!canUseLoopLvm())('faults: the broker misbehaving (CONTRACT 9; private RabbitMQ node, libvirt/QEMU, loop-backed LVM, worker process)', () => {
  const durations: Record<string, number> = {};
  const notes: Record<string, string[]> = {};
  let release: (() => Promise<void>) | null = null;
  let compiled: { entry: string; remove: () => Promise<void> } | null = null;
  let broker: PrivateBroker | null = null;
  let storage: E2eStorage | null = null;
  let vms: TestVms | null = null;
  let tray: TrayWatch | null = null;
  let vm1: TestVm;
  let vm2: TestVm;
  // VM1 moves between A and B, VM2 between C and D.
  let A: Pdiv;
  let B: Pdiv;
  let C: Pdiv;
  let D: Pdiv;

  beforeAll(async () => {
    release = await acquireE2eLock();
    const t0 = Date.now();
    // the node's ~10 s bring-up overlaps with the storage, the VMs and the compile
    const [b, s, w] = await Promise.allSettled([
      PrivateBroker.start(NODE_PREFIX).then((x) => (broker = x)),
      E2eStorage.create(4).then((x) => (storage = x)),
      compileWorker().then((x) => (compiled = x)),
    ]);
    for (const r of [b, s, w]) if (r.status === 'rejected') throw r.reason;
    const st = storage as unknown as E2eStorage;
    [A, B, C, D] = [0, 1, 2, 3].map((i) => st.pdiv(i)) as [Pdiv, Pdiv, Pdiv, Pdiv];
    vms = await TestVms.open();
    vm1 = await vms.create();
    vm2 = await vms.create();
    tray = await TrayWatch.open([vm1.uuid, vm2.uuid]);
    notes['setup'] = [`private broker ${broker?.node ?? '?'} up in ${broker?.bringUpMs ?? '?'} ms; setup ${Date.now() - t0} ms`];
  }, 180_000);

  afterAll(async () => {
    const errors: unknown[] = [];
    await tray?.close().catch((err: unknown) => errors.push(err));
    await vms?.cleanup().catch((err: unknown) => errors.push(err));
    await storage?.remove().catch((err: unknown) => errors.push(err));
    await broker?.stop().catch((err: unknown) => errors.push(err));
    await compiled?.remove();
    await release?.();
    const summary = Object.entries(durations).map(([k, v]) => `${k}: ${(v / 1000).toFixed(1)} s`);
    process.stderr.write(`faults.bus: case durations: ${summary.join(', ')}\n`);
    if (LOG_DIR !== undefined) {
      mkdirSync(LOG_DIR, { recursive: true });
      writeFileSync(join(LOG_DIR, 'summary.json'), JSON.stringify({ durations, notes }, null, 2));
    }
    if (errors.length > 0) throw new AggregateError(errors, 'bus fault test cleanup failed');
  }, 120_000);

  const label = (m: Media | null): string => {
    if (m === null) return 'empty';
    if (!('volumeID' in m)) return m.path;
    return ['A', 'B', 'C', 'D'][[A, B, C, D].findIndex((p) => p.volumeID === m.volumeID)] ?? m.volumeID;
  };

  const brokerOf = (): PrivateBroker => {
    if (broker === null) throw new Error('no private broker');
    return broker;
  };

  interface StartOptions {
    readonly failpoint?: string;
    readonly extraEnv?: Record<string, string>;
    readonly waitReady?: boolean;
  }

  /** One case: its own host id, queues, engine and workers; both drives empty at the start. */
  interface Case {
    readonly hostId: string;
    /** the name the worker gives its broker connection */
    readonly connectionName: string;
    readonly engine: BusEngine;
    readonly sent: Sent[];
    note(line: string): void;
    startWorker(opts?: StartOptions): Promise<WorkerProcess>;
    /** publishes (confirmed); resolves with the commandId */
    send(vm: TestVm, media: Pdiv | null): Promise<string>;
    /** the same command again, same commandId */
    resend(commandId: string): Promise<void>;
    /** events of distinct commandIds of this case so far */
    answered(): number;
    /**
     * The events of `list` (default: all sent): CONTRACT 4 (faults.ts' eventProblems: one
     * final outcome each, completed, in order, chaining), every repeat the whole first event
     * again, and `message_id` = commandId; each a soft expectation of its own.
     */
    expectEvents(what: string, list?: readonly Sent[]): void;
    /** the drive of `vm` as libvirt, the metadata and the host show it */
    expectDrive(vm: TestVm, holds: Pdiv | null, what: string): Promise<void>;
    /** both drives, and exactly their volumes active */
    expectEnd(vm1Holds: Pdiv | null, vm2Holds: Pdiv | null): Promise<void>;
    /** the media changes `vm` saw since the last call equal the non-`none` commands of `list` */
    expectChanges(vm: TestVm, list: readonly Sent[], what: string): Promise<void>;
    /** a fault armed for this case; disarmed (and the broker app started) at the end */
    arm(action: 'close_connection' | 'stop_app'): Promise<ArmedFault>;
  }

  async function withCase(tag: string, body: (c: Case) => Promise<void>): Promise<void> {
    const t0 = Date.now();
    const hostId = uniqueHostId(`bus-${tag}`);
    const b = brokerOf();
    const st = storage as unknown as E2eStorage;
    const tw = tray as unknown as TrayWatch;
    notes[tag] = [];
    const workers: WorkerProcess[] = [];
    const armed: ArmedFault[] = [];
    let stopArmed = false;
    let engine: BusEngine | null = null;
    try {
      const adapters = await openAdapters(st);
      try {
        await emptyDrives(adapters, st, [vm1.uuid, vm2.uuid]);
      } finally {
        await adapters.hypervisor.close();
      }
      await tw.settle();
      tw.take(vm1.uuid);
      tw.take(vm2.uuid);
      engine = await BusEngine.open(b.url, hostId);
      const e = engine;
      const sent: Sent[] = [];
      const bodies = new Map<string, ReturnType<typeof changeCd>>();
      const c: Case = {
        hostId,
        connectionName: `cdrom-worker ${hostId}`,
        engine: e,
        sent,
        note: (line) => notes[tag]?.push(line),
        async startWorker(opts = {}) {
          const w = await startWorkerProcess(
            {
              hostId,
              storageRoot: st.root,
              entry: compiled?.entry,
              domainFilter: onlyDomains(vm1.name, vm2.name),
              ...(opts.failpoint !== undefined ? { failpoint: opts.failpoint } : {}),
              extraEnv: { ...BASE_ENV, ...opts.extraEnv, CDROM_AMQP_URL: b.url },
            },
            { waitReady: opts.waitReady ?? true },
          );
          workers.push(w);
          return w;
        },
        async send(vm, media) {
          const cmd = changeCd(vm.uuid, media);
          sent.push({ commandId: cmd.commandId, vmId: vm.uuid, drive: 'sdc', media });
          bodies.set(cmd.commandId, cmd);
          await e.send(cmd);
          return cmd.commandId;
        },
        async resend(commandId) {
          const cmd = bodies.get(commandId);
          if (cmd === undefined) throw new Error(`${commandId} was never sent`);
          await e.send(cmd);
        },
        answered: () => new Set(e.events.map((ev) => ev.commandId).filter((id) => id !== null && bodies.has(id))).size,
        expectEvents(what, list = sent) {
          const names = new Map(sent.map((s, i) => [s.commandId, `#${i + 1} ${s.media === null ? 'eject' : `→${label(s.media)}`}`]));
          const name = (id: string): string => names.get(id) ?? id;
          const ids = list.map((s) => s.commandId);
          expect.soft(eventProblems(list, e.events, () => null, label), `${what}: events against CONTRACT 4`).toEqual([]);
          expect.soft(repeatProblems(e.arrived, ids, name), `${what}: repeats that are not the whole first event again`).toEqual([]);
          expect.soft(messageIdProblems(e.arrived, ids, name), `${what}: events whose AMQP message_id is not their commandId`).toEqual([]);
        },
        async expectDrive(vm, holds, what) {
          const seen = await observeDrive(vm.name, st);
          const { active: _all, ...want } = settledAs(st, holds);
          expect.soft(seen, `${what}: ${seen.summary}`).toMatchObject(want);
          const mine = [A, B, C, D].filter((p) => (vm === vm1 ? p === A || p === B : p === C || p === D)).map((p) => p.volumeID);
          const activeMine = seen.active.filter((v) => mine.includes(v));
          expect.soft(activeMine, `${what}: its volumes active: ${seen.summary}`).toEqual(holds === null ? [] : [holds.volumeID]);
        },
        async expectEnd(vm1Holds, vm2Holds) {
          await c.expectDrive(vm1, vm1Holds, 'VM1 at the end');
          await c.expectDrive(vm2, vm2Holds, 'VM2 at the end');
          const active = [vm1Holds, vm2Holds].filter((p): p is Pdiv => p !== null).map((p) => p.volumeID);
          const { active: seen, problems } = await st.activeVolumes();
          expect.soft([...seen].sort(), `active volumes at the end (problems: ${problems.join('; ') || 'none'})`).toEqual([...active].sort());
        },
        async expectChanges(vm, list, what) {
          await tw.settle();
          const moves = tw.take(vm.uuid);
          const mine = list.filter((s) => s.vmId === vm.uuid);
          const firsts = mine.map((s) => e.eventsFor(s.commandId)[0]).filter((ev): ev is ResultEvent => ev !== undefined);
          const changes = firsts.filter((ev) => ev.type === 'changeCD.completed' && ev.action !== 'none').length;
          const story = firsts.map((ev) => `${ev.type.slice(9)}/${ev.action} ${label(ev.previous)}→${label(ev.current)}`).join('; ');
          c.note(`${what}: tray ${moves.join(',')}; events ${story}`);
          expect.soft(moves.filter((m) => m === 'open').length, `${what}: media changes the VM saw (tray ${moves.join(',') || 'still'}) against the commands' non-none actions (${story})`).toBe(changes);
        },
        async arm(action) {
          if (action === 'stop_app') stopArmed = true;
          const f = await b.arm(action, c.connectionName);
          armed.push(f);
          return f;
        },
      };
      await body(c);
    } finally {
      for (const f of armed) await f.cancel().catch(() => undefined);
      // a stop_app that fired is undone whatever the case did or did not get to
      if (stopArmed) await b.startApp();
      for (const w of workers) {
        if (!w.running()) continue;
        const exit = await w.stop(12_000);
        notes[tag]?.push(`worker ${w.child.pid ?? '?'} exit ${JSON.stringify(exit)}`);
        expect.soft(exit, `the worker stops cleanly on SIGTERM at the end: ${w.logs().slice(-2000)}`).toEqual({ code: 0, signal: null });
      }
      if (LOG_DIR !== undefined) {
        mkdirSync(LOG_DIR, { recursive: true });
        workers.forEach((w, i) => writeFileSync(join(LOG_DIR, `${tag}.worker${i + 1}.log`), w.logs()));
      }
      await engine?.close();
      durations[tag] = Date.now() - t0;
    }
  }

  /** Resolves once `n` distinct commands of this case have an event. */
  const answeredAtLeast = (c: Case, n: number, timeoutMs = 30_000): Promise<void> => c.engine.until(() => c.answered() >= n, timeoutMs, `events for ${n} commands`);

  /** The commands whose first event arrived after `at` (epoch ms). */
  const answeredAfter = (c: Case, at: number): string[] => {
    const seen = new Set<string>();
    const after: string[] = [];
    for (const a of c.engine.arrived) {
      const id = a.event.commandId;
      if (id === null || seen.has(id)) continue;
      seen.add(id);
      if (a.at > at) after.push(id);
    }
    return after;
  };

  /** 20 commands, 10 per VM, interleaved; each VM ends holding the media of its last one. */
  const BURST_1 = (): (Pdiv | null)[] => [A, B, null, B, A, null, A, B, null, A];
  const BURST_2 = (): (Pdiv | null)[] => [C, null, D, C, null, C, D, null, D, C];

  async function sendBurst(c: Case): Promise<string[]> {
    const one = BURST_1();
    const two = BURST_2();
    const ids: string[] = [];
    for (let i = 0; i < one.length; i++) ids.push(await c.send(vm1, one[i] as Pdiv | null), await c.send(vm2, two[i] as Pdiv | null));
    return ids;
  }

  /**
   * What cases 1 and 2 check once the fault has fired: it landed mid-burst, the worker
   * reconnected by itself (same process, a new connection, ready again), and the burst
   * came out right.
   */
  async function expectThroughFault(c: Case, worker: WorkerProcess, ids: readonly string[], fault: FaultReport, before: readonly string[], what: string): Promise<void> {
    const settled = await c.engine.settle(ids, 60_000);
    const after = answeredAfter(c, fault.at);
    c.note(`${what} at ${fault.at}: ${fault.connections} connection(s), ${fault.unacked} unacked; ${ids.length - after.length} commands answered before, ${after.length} after; repeats ${[...repeatCounts(c.engine.arrived, ids).values()].join(',') || 'none'}`);
    expect(fault.connections, `${what}: the worker's connection "${c.connectionName}" was there`).toBe(1);
    expect.soft(fault.unacked, `${what}: commands in flight (delivered, unacknowledged) on the worker's connection at the fault`).toBeGreaterThanOrEqual(1);
    expect.soft(after.length, `${what}: commands first answered after the fault (it must land mid-burst)`).toBeGreaterThanOrEqual(1);
    expect.soft(ids.length - after.length, `${what}: commands answered before the fault (the 5 it waited for)`).toBeGreaterThanOrEqual(5);
    expect.soft(settled, `${what}: every command answered within 60 s; missing: ${ids.filter((id) => c.engine.eventsFor(id).length === 0).length}`).toBe(true);
    // reconnected by itself: the same process, ready, on a new connection
    expect(before.length, `${what}: connections named "${c.connectionName}" before the fault`).toBe(1);
    await waitUntil(async () => (await httpStatus(worker.port, '/readyz')) === 200, 20_000, '/readyz 200 after the fault').catch(() => undefined);
    expect.soft(worker.running(), `${what}: the worker process is still the one started (no restart): ${worker.logs().slice(-2000)}`).toBe(true);
    expect.soft(await httpStatus(worker.port, '/readyz'), `${what}: /readyz after the fault`).toBe(200);
    const now = await brokerOf().connectionsNamed(c.connectionName);
    expect.soft(now.length, `${what}: connections named "${c.connectionName}" after the fault: ${now.join(', ')}`).toBe(1);
    expect.soft(now.filter((p) => before.includes(p)), `${what}: the worker's connection after the fault is a new one`).toEqual([]);
    c.expectEvents(what);
    await c.expectEnd(A, C);
    await c.expectChanges(vm1, c.sent, `${what}, VM1`);
    await c.expectChanges(vm2, c.sent, `${what}, VM2`);
  }

  it('broker connection closed (close_connection) after 5 of 20 commands on 2 VMs: every command answered, repeats identical, drives chain and end right, the worker reconnects by itself', async () => {
    await withCase('close', async (c) => {
      const worker = await c.startWorker();
      const [before, fault] = await Promise.all([brokerOf().connectionsNamed(c.connectionName), c.arm('close_connection')]);
      const firing = answeredAtLeast(c, 5).then(() => fault.fire());
      // awaited below; a case that fails before that must not leave a rejection unhandled
      firing.catch(() => undefined);
      const ids = await sendBurst(c);
      const report = await firing;
      await expectThroughFault(c, worker, ids, report, before, 'close_connection');
    });
  }, 120_000);

  it('broker restarted (stop_app, start_app) after 5 of 20 commands on 2 VMs: every command answered, repeats identical, drives chain and end right, the worker reconnects by itself', async () => {
    await withCase('restart', async (c) => {
      const worker = await c.startWorker();
      const [before, fault] = await Promise.all([brokerOf().connectionsNamed(c.connectionName), c.arm('stop_app')]);
      const firing = answeredAtLeast(c, 5).then(() => fault.fire());
      // awaited below; a case that fails before that must not leave a rejection unhandled
      firing.catch(() => undefined);
      const ids = await sendBurst(c);
      let report: FaultReport;
      try {
        report = await firing;
      } finally {
        await brokerOf().startApp();
      }
      c.note(`start_app done ${Date.now() - report.at} ms after stop_app`);
      await c.engine.connected();
      await expectThroughFault(c, worker, ids, report, before, 'stop_app/start_app');
    });
  }, 120_000);

  it('journal through outages: 12 commands for one drive, the connection closed once with all 12 delivered and unacked and once mid-way; every repeat (redelivery, and the last 8 sent again) is the first event again, and nothing is done twice', async () => {
    await withCase('journal', async (c) => {
      await c.startWorker();
      const [first, second] = await Promise.all([c.arm('close_connection'), c.arm('close_connection')]);
      const media = [A, B, null, A, null, B, A, B, null, B, A, null];
      const ids: string[] = [];
      for (const m of media) ids.push(await c.send(vm1, m));
      // all 12 delivered (none left ready in the queue), none answered yet
      await waitUntil(async () => (await c.engine.commandsWaiting()) === 0, 10_000, 'the 12 commands to be delivered', 2);
      const out1 = await first.fire();
      const out2 = await answeredAtLeast(c, 6).then(() => second.fire());
      const settled = await c.engine.settle(ids, 60_000);
      const answeredAt1 = ids.length - answeredAfter(c, out1.at).length;
      const after2 = answeredAfter(c, out2.at).length;
      const redelivered = repeatCounts(c.engine.arrived, ids);
      c.note(`outage 1: ${out1.unacked} unacked, ${answeredAt1} answered before it; outage 2: ${out2.unacked} unacked, ${after2} answered after it; repeats from redelivery: ${redelivered.size}`);
      expect(out1.connections, "outage 1 found the worker's connection").toBe(1);
      expect(out2.connections, "outage 2 found the worker's (new) connection").toBe(1);
      // "12 in flight": all delivered; the first one may just have been acked
      expect.soft(out1.unacked, 'outage 1: commands delivered and unacknowledged on the worker connection').toBeGreaterThanOrEqual(11);
      expect.soft(out2.unacked, 'outage 2: commands delivered and unacknowledged (mid-way)').toBeGreaterThanOrEqual(1);
      expect.soft(after2, 'outage 2: commands first answered after it').toBeGreaterThanOrEqual(1);
      expect.soft(settled, 'every command answered').toBe(true);

      // The journal keeps at least the last 8 commands of a drive: those, sent again, are answered from it.
      const again = ids.slice(-8);
      const countBefore = new Map(again.map((id) => [id, c.engine.eventsFor(id).length]));
      for (const id of again) await c.resend(id);
      await c.engine
        .until(() => again.every((id) => c.engine.eventsFor(id).length > (countBefore.get(id) ?? 0)), 30_000, 'an event for every command sent again')
        .catch((err: unknown) => expect.soft(false, String(err)).toBe(true));
      await sleep(300);
      const repeats = repeatCounts(c.engine.arrived, ids);
      expect.soft(repeats.size, 'commandIds with more than one event (8 were sent again)').toBeGreaterThanOrEqual(8);
      c.expectEvents('events');
      await c.expectEnd(null, null);
      await c.expectChanges(vm1, c.sent, 'VM1 over both outages and the re-sends');
    });
  }, 120_000);

  it('two workers for one host: one consumes, the other stands by (/readyz 503, "standby"); never two active consumers; after SIGKILL of the active one the standby is ready within 10 s and finishes the next commands', async () => {
    await withCase('two-workers', async (c) => {
      const queue = commandsQueue(c.hostId);
      const b = brokerOf();
      const first = await c.startWorker();
      const second = await c.startWorker({ waitReady: false });
      const sampler = await b.sampleConsumers(queue, 100);
      // `rabbitmqctl list_consumers` itself, one run after another, alongside the sampler
      const listed: { at: number; active: number; consumers: number }[] = [];
      let listing = true;
      const lister = (async () => {
        while (listing) {
          const rows = await b.listConsumers(queue).catch(() => null);
          if (rows !== null) listed.push({ at: Date.now(), consumers: rows.length, active: rows.filter((r) => r.active).length });
        }
      })();
      try {
        // the host id is in every line: it must not be what says "standby"
        const saysStandby = (w: WorkerProcess): boolean => w.logs().split(c.hostId).join('').toLowerCase().includes('standby');
        // the first is ready (active), so the second is the one to stand by
        await waitUntil(() => saysStandby(second) || !second.running(), 15_000, 'a log line of the second worker saying "standby"').catch(() => undefined);
        expect(second.running(), `the second worker runs: ${second.logs().slice(-2000)}`).toBe(true);
        const statuses = async (): Promise<number[]> => Promise.all([first, second].map((w) => httpStatus(w.port, '/readyz')));
        const ready = await statuses();
        c.note(`/readyz of the two workers: ${ready.join(', ')}`);
        expect(ready.filter((s) => s === 200).length, `exactly one worker ready (/readyz ${ready.join(', ')})`).toBe(1);
        expect.soft(ready.filter((s) => s === 503).length, `the other answers /readyz 503 (${ready.join(', ')})`).toBe(1);
        const [active, standby] = ready[0] === 200 ? [first, second] : [second, first];
        expect.soft(saysStandby(standby), `the worker on standby logs a line with "standby": ${standby.logs().slice(-2000)}`).toBe(true);

        const t0 = Date.now();
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) ids.push(await c.send(vm1, [A, B][i % 2] as Pdiv), await c.send(vm2, [C, D][i % 2] as Pdiv));
        expect.soft(await c.engine.settle(ids, 60_000), 'the 10 commands answered').toBe(true);
        const during = await statuses();
        expect.soft(during, '/readyz of the active and the standby after the 10 commands').toEqual(active === first ? [200, 503] : [503, 200]);
        const t1 = Date.now();

        const killedAt = Date.now();
        const killed = await active.kill();
        expect(killed.signal, 'the active worker died of SIGKILL').toBe('SIGKILL');
        let takeoverMs = Number.NaN;
        await waitUntil(async () => (await httpStatus(standby.port, '/readyz')) === 200, 10_000, 'the standby to be ready')
          .then(() => (takeoverMs = Date.now() - killedAt))
          .catch(() => undefined);
        c.note(`standby ready ${takeoverMs} ms after the SIGKILL`);
        expect.soft(takeoverMs, `the standby ready within 10 s of the active one's SIGKILL: ${standby.logs().slice(-2000)}`).toBeLessThanOrEqual(10_000);

        const next: string[] = [];
        for (let i = 0; i < 2; i++) next.push(await c.send(vm1, [null, A][i] as Pdiv | null), await c.send(vm2, [null, D][i] as Pdiv | null));
        expect.soft(await c.engine.settle(next, 30_000), 'the next 4 commands answered by the worker that took over').toBe(true);
        await sleep(500);
        const t2 = Date.now();
        listing = false;
        await lister;
        const samples = await sampler.stop();

        const twoActive = samples.filter((s) => s.active > 1);
        c.note(`${samples.length} consumer samples (${listed.length} list_consumers runs); consumers seen per sample: ${[...new Set(samples.map((s) => `${s.consumers}/${s.active}`))].join(' ')}`);
        expect(samples.length, 'consumer samples taken').toBeGreaterThanOrEqual(20);
        expect.soft(twoActive.map((s) => `${new Date(s.at).toISOString()} ${s.detail}`), `samples of ${queue} with two active consumers`).toEqual([]);
        expect.soft(
          listed.filter((s) => s.active > 1),
          'list_consumers runs with two active consumers',
        ).toEqual([]);
        expect.soft(listed.length, 'list_consumers runs').toBeGreaterThanOrEqual(2);
        // while the 10 commands ran and after the takeover, exactly one consumer was active
        const noneActive = samples.filter((s) => ((s.at >= t0 && s.at <= t1) || s.at >= killedAt + (Number.isNaN(takeoverMs) ? 10_000 : takeoverMs)) && s.at <= t2 && s.active !== 1);
        expect.soft(noneActive.map((s) => `${new Date(s.at).toISOString()} ${s.consumers}/${s.active}`), 'samples without exactly one active consumer while commands ran or after the takeover').toEqual([]);

        c.expectEvents('events');
        await c.expectEnd(A, D);
        await c.expectChanges(vm1, c.sent, 'VM1');
        await c.expectChanges(vm2, c.sent, 'VM2');
      } finally {
        listing = false;
        await lister;
        await sampler.stop();
      }
    });
  }, 120_000);

  it('poison message: a load for VM1 that crashes the worker every time (prepare:crash@VM1, restarted like a supervisor would) is dead-lettered with one failed INTERNAL event after at most CDROM_RETRY_LIMIT+1 crashes, VM1 ends empty and clean; VM2\'s commands in the same windows are never blamed', async () => {
    await withCase('poison', async (c) => {
      const limit = 2;
      const MAX_RESTARTS = 10;
      const failpoint = `prepare:crash@${vm1.uuid}`;
      const env = { CDROM_RETRY_LIMIT: String(limit) };
      const exits: ExitStatus[] = [];
      let current = await c.startWorker({ failpoint, extraEnv: env });
      const vm2Media = (): Pdiv | null => [C, D, null][c.sent.filter((s) => s.vmId === vm2.uuid).length % 3] ?? null;
      const poison = await c.send(vm1, A);
      for (let i = 0; i < 6; i++) await c.send(vm2, vm2Media());
      // the supervisor: restart on 137, publishing two more VM2 commands into each new window
      let supervising = true;
      const supervisor = (async () => {
        while (supervising) {
          const exit = await Promise.race([current.exited, sleep(200).then(() => null)]);
          if (exit === null) continue;
          exits.push(exit);
          if (exit.code !== 137 || exits.length > MAX_RESTARTS) return;
          for (let i = 0; i < 2; i++) await c.send(vm2, vm2Media());
          current = await c.startWorker({ failpoint, extraEnv: env, waitReady: false });
        }
      })();
      try {
        await c.engine.until((arrived) => arrived.some((a) => a.event.commandId === poison), 90_000, 'an event for the poison message').catch((err: unknown) => {
          throw new Error(`${String(err)}; worker exits ${JSON.stringify(exits)}; last worker log: ${current.logs().slice(-3000)}`);
        });
        const crashesAtEvent = exits.length;
        const vm2Ids = () => c.sent.filter((s) => s.vmId === vm2.uuid).map((s) => s.commandId);
        expect.soft(await c.engine.settle(vm2Ids(), 60_000), "every VM2 command answered").toBe(true);
        supervising = false;
        await supervisor;
        c.note(`exits ${exits.map((x) => x.code ?? x.signal).join(',')}; ${crashesAtEvent} before the poison's event; VM2 sent ${vm2Ids().length}`);
        expect(exits.every((x) => x.code === 137), `every worker exit was the failpoint's crash (137): ${JSON.stringify(exits)}`).toBe(true);
        expect.soft(crashesAtEvent, 'crashes before the poison message was dead-lettered').toBeGreaterThanOrEqual(1);
        expect.soft(crashesAtEvent, `crashes before the poison message was dead-lettered (CDROM_RETRY_LIMIT ${limit})`).toBeLessThanOrEqual(limit + 1);
        expect.soft(exits.length, 'no crash after the poison message was dead-lettered').toBe(crashesAtEvent);
        expect(current.running(), `the last worker runs on: ${current.logs().slice(-2000)}`).toBe(true);

        const events = c.engine.eventsFor(poison);
        expect.soft(events.length, `events for the poison message: ${JSON.stringify(events)}`).toBe(1);
        expect.soft(events[0], 'the poison message\'s event').toMatchObject({ type: 'changeCD.failed', vmId: vm1.uuid, error: { code: 'INTERNAL' } });
        expect.soft(events[0]?.error?.message ?? '', "the event's message says the worker crashed while running it").toMatch(/crash/i);
        // dead-lettered after recovery made its drive consistent: check it now, with that worker still up
        await c.expectDrive(vm1, null, 'VM1 when its command was dead-lettered');

        // a worker without the failpoint starts (recovers) and stops: nothing is left
        const exit = await current.stop(12_000);
        expect.soft(exit, 'the failpoint worker stops cleanly on SIGTERM').toEqual({ code: 0, signal: null });
        const clean = await c.startWorker({ extraEnv: env });
        const cleanExit = await clean.stop(12_000);
        expect.soft(cleanExit, 'the worker without the failpoint stops cleanly').toEqual({ code: 0, signal: null });

        const dead = await c.engine.takeDeadLetters();
        const deadIds = dead.map((m) => (JSON.parse(m.content.toString('utf8')) as { commandId?: string }).commandId);
        expect.soft(deadIds, 'dead letters: only the poison message').toEqual([poison]);
        const headers = (dead[0]?.properties.headers ?? {}) as Record<string, unknown>;
        expect.soft(headers['x-cdrom-error-code'], 'the dead letter\'s x-cdrom-error-code').toBe('INTERNAL');
        expect.soft(await c.engine.commandsWaiting(), 'commands left in the queue').toBe(0);

        const vm2Sent = c.sent.filter((s) => s.vmId === vm2.uuid);
        c.expectEvents('VM2', vm2Sent);
        const vm2Last = vm2Sent[vm2Sent.length - 1]?.media ?? null;
        await c.expectEnd(null, vm2Last as Pdiv | null);
        await c.expectChanges(vm1, [], 'VM1 (the poison load crashes before the media change)');
        await c.expectChanges(vm2, vm2Sent, 'VM2');
      } finally {
        supervising = false;
        await supervisor;
      }
    });
  }, 150_000);

  it('SIGTERM during a burst of 20 (CDROM_DRAIN_TIMEOUT_MS 3000): the worker exits 0 within 5 s; after a restart every command is answered and none ran twice', async () => {
    await withCase('sigterm', async (c) => {
      const drainMs = 3000;
      const env = { CDROM_DRAIN_TIMEOUT_MS: String(drainMs) };
      const worker = await c.startWorker({ extraEnv: env });
      const ids = await sendBurst(c);
      await answeredAtLeast(c, 5);
      const t0 = Date.now();
      worker.child.kill('SIGTERM');
      const exit = await Promise.race([worker.exited, sleep(drainMs + 10_000).then(() => null)]);
      const tookMs = Date.now() - t0;
      const answeredAtExit = c.answered();
      c.note(`SIGTERM → exit ${JSON.stringify(exit)} in ${tookMs} ms; ${answeredAtExit} of 20 answered by then`);
      expect.soft(exit, `exit after SIGTERM: ${worker.logs().slice(-2000)}`).toEqual({ code: 0, signal: null });
      expect.soft(tookMs, 'SIGTERM to exit (drain timeout + 2 s)').toBeLessThanOrEqual(drainMs + 2000);
      expect.soft(answeredAtExit, 'commands answered when the worker had exited (SIGTERM must land mid-burst)').toBeLessThan(ids.length);

      await c.startWorker({ extraEnv: env });
      expect.soft(await c.engine.settle(ids, 60_000), 'every command answered after the restart').toBe(true);
      await sleep(300);
      c.expectEvents('events');
      await c.expectEnd(A, C);
      await c.expectChanges(vm1, c.sent, 'VM1');
      await c.expectChanges(vm2, c.sent, 'VM2');
    });
  }, 120_000);
});
