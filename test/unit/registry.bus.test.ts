import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { ChangeCdCommand } from '../../src/contracts/schemas.js';
import { CdromError } from '../../src/domain/errors.js';
import { isPdiv, sameMedia, type Media } from '../../src/domain/media.js';
import { Journal } from '../../src/domain/metadata/journal.metadata.js';
import { VmMetadata } from '../../src/domain/metadata/ovirt-vm.metadata.js';
import { JOURNAL_NS, OVIRT_VM_NS, type DriveSource, type HypervisorPort } from '../../src/domain/ports.js';
import { UnackedCommands } from '../../src/domain/unacked-commands.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createActivities } from '../../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../../src/machines/drive.registry.js';
import type { CommandTicket, FinalExecution } from '../../src/machines/executor.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { FakeStorage } from '../fakes/storage.fake.js';
import { FaultPlan, ProcessGate } from '../support/fault-gate.js';
import { EMPTY_MD, ISO_A, ISO_B } from '../support/world.js';

/**
 * The registry as the bus sees it through broker and process faults (CONTRACT §9, issue
 * 14): poison messages counted by the worker's own journal, redeliveries that join the
 * execution in progress, shutdown, and the longest hold of a delivery.
 */

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const changeCd = (vmId: string, media: Media | null): ChangeCdCommand => ({ type: 'changeCD', version: 1, commandId: randomUUID(), vmId, drive: 'sdc', media });

interface Settled {
  readonly commandId: string;
  readonly final: FinalExecution;
}

/** A ticket whose delivery lives until `kill()`; its finals go to `into`. */
function ticket(into: Settled[], commandId: string, opts: { settleBy?: number } = {}) {
  let alive = true;
  const t: CommandTicket = {
    ...(opts.settleBy !== undefined ? { settleBy: opts.settleBy } : {}),
    live: () => alive,
    settle: (final) => {
      into.push({ commandId, final });
      return Promise.resolve();
    },
  };
  return { ticket: t, kill: () => (alive = false) };
}

/** updateDevice calls held until released, per VM. */
function holdUpdates(hv: HypervisorPort, vmId: string) {
  const real = hv.updateDevice.bind(hv);
  const held: (() => void)[] = [];
  let calls = 0;
  let entered!: () => void;
  const first = new Promise<void>((r) => (entered = r));
  hv.updateDevice = async (id: string, drive: string, source: DriveSource | null) => {
    if (id === vmId) {
      calls += 1;
      entered();
      await new Promise<void>((r) => held.push(r));
    }
    return real(id, drive, source);
  };
  return { first, calls: () => calls, release: () => held.splice(0).forEach((r) => r()) };
}

function world() {
  const hv = new FakeHypervisor();
  const storage = new FakeStorage(['/iso']);
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  const vm = (): string => {
    const vmId = randomUUID();
    hv.addVm(vmId, { drives: { sdc: null }, metadata: { [OVIRT_VM_NS.uri]: EMPTY_MD } });
    return vmId;
  };
  return { hv, storage, vm };
}

function registryOver(hv: HypervisorPort, storage: FakeStorage | ReturnType<ProcessGate['storage']>, opts: { limit?: number; stepTimeoutMs?: number; unacked?: UnackedCommands } = {}) {
  return new DriveRegistry({
    activities: createActivities({ hypervisor: hv, storage, ...(opts.unacked ? { unacked: opts.unacked } : {}) }),
    concurrency: 8,
    stepTimeoutMs: opts.stepTimeoutMs ?? 60_000,
    retry: { limit: opts.limit ?? 5, baseDelayMs: 5, maxDelayMs: 20 },
    log: silentLogger(),
    idleTtlMs: 0,
  });
}

function driveState(w: ReturnType<typeof world>, vmId: string) {
  const md = VmMetadata.parse(w.hv.metadataOf(vmId, OVIRT_VM_NS.uri)).drive('sdc');
  return {
    source: w.hv.sourceOf(vmId, 'sdc')?.path ?? null,
    states: md.entries.map((e) => e.state).filter((s) => s !== null),
    pdivs: md.entries.filter((e) => e.pdiv !== null).length,
    pending: Journal.parse(w.hv.metadataOf(vmId, JOURNAL_NS.uri)),
  };
}

describe('poison messages: counted by the worker, in its journal', () => {
  it('a command the worker keeps dying in is given up after RETRY_LIMIT+1 deaths, with a consistent drive; the command in flight beside it is not blamed', async () => {
    const limit = 2;
    const w = world();
    const vm1 = w.vm();
    const vm2 = w.vm();
    const poison = changeCd(vm1, ISO_A);
    const innocent = changeCd(vm2, ISO_B);
    const plan = new FaultPlan();
    const finals: Settled[] = [];
    let crashes = 0;
    const settled = (c: ChangeCdCommand) => finals.some((f) => f.commandId === c.commandId);
    for (let life = 1; life <= 10 && !(settled(poison) && settled(innocent)); life++) {
      const gate = new ProcessGate(plan, (m) => isPdiv(m) && m.volumeID === ISO_A.volumeID);
      const hv = gate.hypervisor(w.hv);
      // In the first life the innocent command is mid-change when the worker dies.
      const vm2Update = life === 1 ? holdUpdates(hv, vm2) : null;
      const storage = gate.storage(w.storage);
      if (vm2Update) {
        // the poison's prepare waits until the innocent command is mid-change
        const prepare = storage.prepareVolume.bind(storage);
        storage.prepareVolume = async (m) => {
          if (sameMedia(m, ISO_A)) await vm2Update.first;
          return prepare(m);
        };
      }
      const registry = registryOver(hv, storage, { limit });
      // startup recovery, as the worker does before it consumes
      await Promise.race([Promise.all([registry.recover(vm1, 'sdc'), registry.recover(vm2, 'sdc')]), gate.crashed]);
      // the redeliveries of what is not settled yet, in the same window
      const deliveries = [innocent, poison].filter((c) => !settled(c)).map((c) => ({ c, t: ticket(finals, c.commandId) }));
      const done = deliveries.map(({ c, t }) => registry.submit(c, t.ticket));
      const ended = await Promise.race([Promise.all(done).then(() => 'settled' as const), gate.crashed.then(() => 'crashed' as const)]);
      if (ended === 'crashed') {
        crashes += 1;
        for (const d of deliveries) d.t.kill();
      }
    }
    expect(crashes, 'crashes before the poison message was given up').toBe(limit + 1);
    const byId = new Map(finals.map((f) => [f.commandId, f.final]));
    expect(finals.filter((f) => f.commandId === poison.commandId)).toHaveLength(1);
    const p = byId.get(poison.commandId);
    expect(p?.kind === 'exhausted' && [p.error.code, p.error.retryable]).toEqual(['INTERNAL', false]);
    expect(p?.kind === 'exhausted' ? p.error.message : '').toMatch(/worker crashed while running it/);
    const i = byId.get(innocent.commandId);
    expect(i?.kind === 'result' && [i.result.outcome, i.result.action, sameMedia(i.result.current, ISO_B)]).toEqual(['completed', 'load', true]);
    // vm1: empty and clean, nothing active, the journal forgot the command (a replay starts afresh)
    const s1 = driveState(w, vm1);
    expect([s1.source, s1.states, s1.pdivs]).toEqual([null, [], 0]);
    expect(s1.pending.find('sdc', poison.commandId)).toBeUndefined();
    expect(w.storage.activeVolumeIds()).toEqual([ISO_B.volumeID.toLowerCase()]);
    // vm2 holds B, and its record says the first run ended during it once
    expect(driveState(w, vm2).states).toEqual([]);
  });

  it('deaths of other runs count, retries within a run do not: in-process retries and then one crash do not poison it', async () => {
    const w = world();
    const vm1 = w.vm();
    const cmd = changeCd(vm1, ISO_A);
    const finals: Settled[] = [];
    const plan = new FaultPlan();
    // life 1: two prepares fail retryably (retried in place), the third one kills the process
    const lost = () => new CdromError('PREPARE_FAILED', 'LVM lock timeout (fake)', { retryable: true });
    w.storage.failNext('prepare', lost());
    w.storage.failNext('prepare', lost());
    let prepares = 0;
    const gate1 = new ProcessGate(plan, () => ++prepares === 3);
    const r1 = registryOver(gate1.hypervisor(w.hv), gate1.storage(w.storage), { limit: 2 });
    void r1.submit(cmd, ticket(finals, cmd.commandId).ticket);
    await gate1.crashed;
    expect(prepares).toBe(3);
    const gate2 = new ProcessGate(plan);
    const r2 = registryOver(gate2.hypervisor(w.hv), gate2.storage(w.storage), { limit: 2 });
    await r2.recover(vm1, 'sdc');
    await r2.submit(cmd, ticket(finals, cmd.commandId).ticket);
    expect(finals.map((f) => (f.final.kind === 'result' ? f.final.result.outcome : f.final.kind))).toEqual(['completed']);
    expect(w.hv.sourceOf(vm1, 'sdc')).not.toBeNull();
  });
});

describe('redeliveries join the execution in progress', () => {
  it('one execution, settled through the live delivery; the dead one neither settles nor retries', async () => {
    const w = world();
    const vmId = w.vm();
    const registry = registryOver(w.hv, w.storage);
    const updates = holdUpdates(w.hv, vmId);
    const cmd = changeCd(vmId, ISO_A);
    const finals: Settled[] = [];
    const first = ticket(finals, cmd.commandId);
    const firstDone = registry.submit(cmd, first.ticket);
    await updates.first;
    first.kill(); // the broker connection dropped
    const again = registry.submit(cmd, ticket(finals, cmd.commandId).ticket);
    expect(await firstDone).toBe('abandoned');
    updates.release();
    expect(await again).toBe('settled');
    expect(updates.calls()).toBe(1);
    expect(finals).toHaveLength(1);
    const f = finals[0]?.final;
    expect(f?.kind === 'result' && [f.result.outcome, f.replayed]).toEqual(['completed', false]);
  });

  it('a delivery that died and is not redelivered: no retry, no dead letter, the journal answers it later with an identical result', async () => {
    const w = world();
    const vmId = w.vm();
    const registry = registryOver(w.hv, w.storage);
    const updates = holdUpdates(w.hv, vmId);
    const cmd = changeCd(vmId, ISO_A);
    const finals: Settled[] = [];
    const first = ticket(finals, cmd.commandId);
    const done = registry.submit(cmd, first.ticket);
    await updates.first;
    first.kill();
    updates.release();
    expect(await done).toBe('abandoned');
    expect(finals).toHaveLength(0);
    // later, the redelivery: answered from the journal, with the times of the first result
    await registry.submit(cmd, ticket(finals, cmd.commandId).ticket);
    const f = finals[0]?.final;
    expect(f?.kind === 'result' && [f.replayed, f.result.outcome]).toEqual([true, 'completed']);
    expect(updates.calls()).toBe(1);
  });

  it('a repeat is answered with the first times, so its event is identical', async () => {
    const w = world();
    const vmId = w.vm();
    const registry = registryOver(w.hv, w.storage);
    const cmd = changeCd(vmId, ISO_A);
    const finals: Settled[] = [];
    await registry.submit(cmd, ticket(finals, cmd.commandId).ticket);
    await sleep(15);
    await registry.submit(cmd, ticket(finals, cmd.commandId).ticket);
    const [a, b] = finals.map((f) => (f.final.kind === 'result' ? { ...f.final, replayed: undefined } : null));
    expect(b).toEqual(a);
  });
});

describe('the journal keeps what may be redelivered', () => {
  it('records of unacked commands survive any number of later commands on the drive', async () => {
    const w = world();
    const vmId = w.vm();
    const unacked = new UnackedCommands();
    const registry = registryOver(w.hv, w.storage, { unacked });
    const finals: Settled[] = [];
    const cmds = Array.from({ length: 14 }, (_, i) => changeCd(vmId, i % 2 === 0 ? ISO_A : null));
    // all 14 delivered, none acked (the acks died with the connection)
    for (const c of cmds) unacked.delivered(c.commandId);
    await Promise.all(cmds.map((c) => registry.submit(c, ticket(finals, c.commandId).ticket)));
    const firsts = new Map(finals.map((f) => [f.commandId, f.final]));
    const journal = Journal.parse(w.hv.metadataOf(vmId, JOURNAL_NS.uri));
    for (const c of cmds) expect(journal.find('sdc', c.commandId)?.status, c.commandId).toBe('done');
    // every redelivery is answered from the journal, identical, nothing runs again
    const sources = w.hv.calls.updateDevice;
    const repeats: Settled[] = [];
    await Promise.all(cmds.map((c) => registry.submit(c, ticket(repeats, c.commandId).ticket)));
    expect(w.hv.calls.updateDevice).toBe(sources);
    for (const r of repeats) {
      const first = firsts.get(r.commandId);
      expect(r.final.kind === 'result' && r.final.replayed).toBe(true);
      expect(r.final.kind === 'result' && first?.kind === 'result' && [r.final.result, r.final.startedAt, r.final.finishedAt]).toEqual(
        first?.kind === 'result' && [first.result, first.startedAt, first.finishedAt],
      );
    }
  });
});

describe('shutdown and the longest hold', () => {
  it('drain: queued commands are abandoned at once, the running attempt finishes and is settled, no retry starts', async () => {
    const w = world();
    const vmId = w.vm();
    const registry = registryOver(w.hv, w.storage);
    const updates = holdUpdates(w.hv, vmId);
    const finals: Settled[] = [];
    const load = changeCd(vmId, ISO_A);
    const eject = changeCd(vmId, null);
    const running = registry.submit(load, ticket(finals, load.commandId).ticket);
    const queued = registry.submit(eject, ticket(finals, eject.commandId).ticket);
    await updates.first;
    const t0 = Date.now();
    const drained = registry.drain(5_000);
    expect(await queued).toBe('abandoned');
    updates.release();
    await drained;
    expect(Date.now() - t0).toBeLessThan(1_000);
    expect(await running).toBe('settled');
    expect(finals.map((f) => f.commandId)).toEqual([load.commandId]);
    expect(w.hv.calls.updateDevice).toBe(1);
    // a reconciliation pass still under way queues nothing more
    const late = await registry.recover(vmId, 'sdc');
    expect(late.kind === 'recovered' && late.error?.message).toBe('worker is shutting down');
  });

  it('a drain during a backoff abandons the command without another attempt', async () => {
    const w = world();
    const vmId = w.vm();
    const registry = new DriveRegistry({
      activities: createActivities({ hypervisor: w.hv, storage: w.storage }),
      concurrency: 4,
      stepTimeoutMs: 60_000,
      retry: { limit: 5, baseDelayMs: 10_000, maxDelayMs: 10_000 },
      log: silentLogger(),
      idleTtlMs: 0,
    });
    w.hv.failNext('updateDevice', { error: new CdromError('CHANGE_FAILED', 'connection lost (fake)', { retryable: true }) });
    const finals: Settled[] = [];
    const cmd = changeCd(vmId, ISO_A);
    const done = registry.submit(cmd, ticket(finals, cmd.commandId).ticket);
    await sleep(50); // in its 10 s backoff now
    const t0 = Date.now();
    await registry.drain(5_000);
    expect(await done).toBe('abandoned');
    expect(Date.now() - t0).toBeLessThan(500);
    expect(finals).toHaveLength(0);
    expect(w.hv.calls.updateDevice).toBe(1);
  });

  it('a command whose drive stays held by a hung call is given up (TIMEOUT) at its settle-by time, in order', async () => {
    const w = world();
    const vmId = w.vm();
    const registry = registryOver(w.hv, w.storage, { stepTimeoutMs: 100 });
    const updates = holdUpdates(w.hv, vmId); // never released: the call hangs
    const finals: Settled[] = [];
    const load = changeCd(vmId, ISO_A);
    const eject = changeCd(vmId, null);
    const settleBy = Date.now() + 600;
    const a = registry.submit(load, ticket(finals, load.commandId, { settleBy }).ticket);
    const b = registry.submit(eject, ticket(finals, eject.commandId, { settleBy: settleBy + 100 }).ticket);
    await Promise.all([a, b]);
    expect(finals.map((f) => [f.commandId, f.final.kind, f.final.kind === 'exhausted' ? f.final.error.code : null])).toEqual([
      [load.commandId, 'exhausted', 'TIMEOUT'],
      [eject.commandId, 'exhausted', 'TIMEOUT'],
    ]);
    expect(updates.calls()).toBe(1);
    expect(registry.hungCalls).toBe(1);
    updates.release();
  });
});
