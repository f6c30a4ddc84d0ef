import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { ChangeCdCommand } from '../../src/contracts/schemas.js';
import type { Media, Pdiv } from '../../src/domain/media.js';
import { Journal } from '../../src/domain/metadata/journal.metadata.js';
import { VmMetadata, type DriveMetadata } from '../../src/domain/metadata/ovirt-vm.metadata.js';
import { JOURNAL_NS, OVIRT_VM_NS, type DriveSource } from '../../src/domain/ports.js';
import { createFailpoints, formatFailpoint, parseFailpoints, type Failpoint } from '../../src/infra/failpoints.js';
import { silentLogger } from '../../src/infra/logging.js';
import { createActivities } from '../../src/machines/cdrom.activities.js';
import { DriveRegistry } from '../../src/machines/drive.registry.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { FakeStorage, blockPath } from '../fakes/storage.fake.js';
import { EMPTY_MD, ISO_A, ISO_B, loadedMd, makeWorld, resultOf } from '../support/world.js';

/**
 * CONTRACT 7 (v1.1): parsing of `CDROM_FAILPOINT` (scopes included), and where the new
 * points fire — over the fakes, with a "crash" that records what a restarted worker
 * would find (drive, metadata, journal, active volumes) and then freezes the fakes, so
 * nothing the dead process would not have done lands afterwards. The restart is a new
 * registry over the same fakes: recovery, then the redelivered command.
 */

const VM_A = '0b7c6a52-3f0e-4d8a-9b1c-2e4f6a8b0c1d';
const VM_B = '6f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0';

describe('parseFailpoints', () => {
  it('reads points, actions and optional per-item VM scopes', () => {
    expect(parseFailpoints(` prepare:error, journal-pending:crash@${VM_A.toUpperCase()} ,rollback:crash`)).toEqual([
      { point: 'prepare', action: 'error', vmId: null },
      { point: 'journal-pending', action: 'crash', vmId: VM_A },
      { point: 'rollback', action: 'crash', vmId: null },
    ]);
    expect(parseFailpoints('')).toEqual([]);
  });

  it('takes the same point several times with different scopes', () => {
    const rules = parseFailpoints(`prepare:error@${VM_A},prepare:crash@${VM_B},prepare:crash`);
    expect(rules.map(formatFailpoint)).toEqual([`prepare:error@${VM_A}`, `prepare:crash@${VM_B}`, 'prepare:crash']);
  });

  it.each([
    ['nowhere:crash', /unknown failpoint 'nowhere'/],
    ['prepare:explode', /action must be crash or error/],
    ['prepare', /action must be crash or error/],
    ['prepare:crash:extra', /action must be crash or error/],
    ['rollback:error', /^rollback:error is not supported: .*libvirt-update:error,rollback:crash/],
    ['before-ack:error', /^before-ack:error is not supported: .*before-ack:crash/],
    ['prepare:crash@', /must be a VM UUID, got ''/],
    ['prepare:crash@cdw-test-1', /must be a VM UUID, got 'cdw-test-1'/],
    [`prepare:crash@${VM_A},prepare:error@${VM_A.toUpperCase()}`, /'prepare' is given twice for VM/],
    ['teardown:crash,teardown:error', /'teardown' is given twice for every VM/],
  ])('refuses %s', (spec, message) => {
    expect(() => parseFailpoints(spec)).toThrow(message);
    try {
      parseFailpoints(spec);
    } catch (err) {
      expect((err as Error).message).not.toMatch(/\n/);
    }
  });
});

describe('createFailpoints', () => {
  it('fires a scoped rule only for its VM, an unscoped one for every VM', () => {
    const crashed: string[] = [];
    let current = '';
    const fp = createFailpoints(parseFailpoints(`before-ack:crash@${VM_A},teardown:error@${VM_B},journal-done:crash`), () => {
      crashed.push(current);
      throw new Error('crashed');
    });
    const after = (point: Failpoint, vmId: string): void => {
      current = `${point}@${vmId}`;
      try {
        fp.after(point, vmId);
      } catch {
        /* recorded */
      }
    };
    after('before-ack', VM_B);
    after('before-ack', VM_A.toUpperCase());
    after('journal-done', VM_B);
    after('teardown', VM_B);
    expect(crashed).toEqual([`before-ack@${VM_A.toUpperCase()}`, `journal-done@${VM_B}`]);
    expect(() => fp.before('teardown', VM_A)).not.toThrow();
    expect(() => fp.before('teardown', VM_B)).toThrow(expect.objectContaining({ code: 'TEARDOWN_FAILED', retryable: false }));
    expect(() => fp.before('before-ack', VM_A)).not.toThrow();
  });
});

// ---- where the points fire in the flows ------------------------------------------------

interface Seen {
  readonly source: DriveSource | null;
  readonly drive: DriveMetadata;
  readonly journal: string | null;
  readonly active: string[];
}

class Crash extends Error {}

/**
 * Two VMs (A and B) with a CD-ROM `sdc` each over the fakes, run by a worker with the
 * given failpoints; `crashed` resolves with what the fakes held when the process "died".
 */
function host(spec: string, holding: { a: Pdiv | null; b?: Pdiv | null }) {
  const hv = new FakeHypervisor();
  const storage = new FakeStorage(['/iso']);
  storage.addVolume(ISO_A);
  storage.addVolume(ISO_B);
  for (const [vmId, held] of [
    [VM_A, holding.a],
    [VM_B, holding.b ?? null],
  ] as const) {
    hv.addVm(vmId, { drives: { sdc: held === null ? null : { type: 'block', path: blockPath(held) } }, metadata: { [OVIRT_VM_NS.uri]: held === null ? EMPTY_MD : loadedMd(held) } });
    if (held !== null) storage.activate(held);
  }
  const look = (vmId: string, commandId?: string): Seen => ({
    source: hv.sourceOf(vmId, 'sdc'),
    drive: VmMetadata.parse(hv.metadataOf(vmId, OVIRT_VM_NS.uri)).drive('sdc'),
    journal: commandId === undefined ? null : (Journal.parse(hv.metadataOf(vmId, JOURNAL_NS.uri)).find('sdc', commandId)?.status ?? null),
    active: storage.activeVolumeIds(),
  });
  let dead = false;
  let onCrash: (seen: Seen) => void = () => undefined;
  let crashVm = '';
  const crashed = new Promise<Seen>((r) => (onCrash = r));
  // Once dead, every call of the old process hangs: nothing more of it lands.
  const frozen = <T extends object>(target: T): T =>
    new Proxy(target, {
      get(t, key) {
        const v = Reflect.get(t, key, t) as unknown;
        if (typeof v !== 'function') return v;
        return (...args: unknown[]) => (dead ? new Promise(() => undefined) : (v as (...a: unknown[]) => unknown).apply(t, args));
      },
    });
  const updates: string[] = [];
  const counting = new Proxy(hv, {
    get(t, key) {
      const v = Reflect.get(t, key, t) as unknown;
      if (key === 'updateDevice') return (vmId: string, drive: string, source: DriveSource | null) => t.updateDevice(vmId, drive, source).then(() => void updates.push(`${vmId}:${source?.path ?? 'empty'}`));
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
  const fp = createFailpoints(parseFailpoints(spec), () => {
    dead = true;
    onCrash(look(crashVm, lastCommand?.commandId));
    throw new Crash('crashed');
  });
  let lastCommand: ChangeCdCommand | null = null;
  const registry = (failpoints: boolean, stepTimeoutMs: number) =>
    new DriveRegistry({
      activities: createActivities(failpoints ? { hypervisor: frozen(counting), storage: frozen(storage), failpoints: fp } : { hypervisor: counting, storage }),
      concurrency: 4,
      stepTimeoutMs,
      log: silentLogger(),
      idleTtlMs: 0,
    });
  const first = registry(true, 200);
  const command = (vmId: string, media: Media | null): ChangeCdCommand => ({ type: 'changeCD', version: 1, commandId: randomUUID(), vmId, drive: 'sdc', media });
  return {
    hv,
    storage,
    updates,
    crashed,
    look,
    /** runs the command on the worker with failpoints; settles with its result, or never once it crashed */
    run(vmId: string, media: Media | null) {
      const cmd = command(vmId, media);
      lastCommand = cmd;
      crashVm = vmId;
      return { cmd, done: first.execute(cmd) };
    },
    /** a worker started without failpoints: startup recovery of the drive, then the redelivery */
    async restart(cmd: ChangeCdCommand) {
      const second = registry(false, 5_000);
      await second.recover(cmd.vmId, 'sdc');
      return second.execute(cmd);
    },
  };
}

const settled = (p: Pdiv | null) => ({ entries: [{ state: null, pdiv: p }], change: null });

describe('journal-pending and journal-done', () => {
  it('journal-pending:crash fires after the pending record is written, before metadata-begin; the redelivery does the change once', async () => {
    const h = host('journal-pending:crash', { a: null });
    const { cmd } = h.run(VM_A, ISO_A);
    const seen = await h.crashed;
    expect(seen).toEqual({ source: null, drive: settled(null), journal: 'pending', active: [] });
    const r = resultOf(await h.restart(cmd));
    expect(r).toMatchObject({ outcome: 'completed', action: 'load', previous: null, current: ISO_A });
    expect(h.look(VM_A, cmd.commandId)).toEqual({ source: { type: 'block', path: blockPath(ISO_A) }, drive: settled(ISO_A), journal: 'done', active: [ISO_A.volumeID] });
    expect(h.updates).toHaveLength(1);
  });

  it('journal-done:crash fires after the done record, before the write that removes state; the redelivery is answered from the record', async () => {
    const h = host('journal-done:crash', { a: ISO_A });
    const { cmd } = h.run(VM_A, ISO_B);
    const seen = await h.crashed;
    // The change is in the drive and recorded done; the metadata still says it is in progress.
    expect(seen.source).toEqual({ type: 'block', path: blockPath(ISO_B) });
    expect(seen.journal).toBe('done');
    expect(seen.drive.entries).toEqual([{ state: 'ejecting', pdiv: ISO_A }, { state: null, pdiv: ISO_B }]);
    const e = await h.restart(cmd);
    expect(e).toMatchObject({ kind: 'result', replayed: true, result: { outcome: 'completed', action: 'change', previous: ISO_A, current: ISO_B } });
    expect(h.look(VM_A, cmd.commandId)).toMatchObject({ drive: settled(ISO_B), active: [ISO_B.volumeID] });
    expect(h.updates).toHaveLength(1);
  });

  it('journal-done:crash after a failed flow: its result is recorded, the redelivery answers the same failure', async () => {
    const h = host('prepare:error,journal-done:crash', { a: null });
    const { cmd } = h.run(VM_A, ISO_A);
    expect(await h.crashed).toEqual({ source: null, drive: settled(null), journal: 'done', active: [] });
    const e = await h.restart(cmd);
    expect(e).toMatchObject({ kind: 'result', replayed: true, result: { outcome: 'failed', action: 'load', previous: null, current: null, error: { code: 'PREPARE_FAILED' } } });
    expect(h.updates).toHaveLength(0);
  });

  it('journal-pending:error fails the command before anything changes', async () => {
    const w = makeWorld({ failpoints: createFailpoints(parseFailpoints('journal-pending:error')) });
    const r = resultOf(await w.run(ISO_A));
    expect(r).toMatchObject({ outcome: 'failed', action: 'load', current: null, error: { code: 'INTERNAL' } });
    expect(w.source()).toBeNull();
    expect(w.active()).toEqual([]);
  });

  it('journal-done:error is logged and the flow finishes', async () => {
    const w = makeWorld({ failpoints: createFailpoints(parseFailpoints('journal-done:error')) });
    const r = resultOf(await w.run(ISO_A));
    expect(r).toMatchObject({ outcome: 'completed', action: 'load', current: ISO_A });
    expect(r.warnings.map((x) => x.code)).toEqual(['JOURNAL_FAILED']);
    expect(w.drive()).toEqual(settled(ISO_A));
  });
});

describe('rollback:crash: right after the first undo step of an "if failed" branch', () => {
  const cases: { name: string; spec: string; from: Pdiv | null; to: Pdiv | null; atCrash: Omit<Seen, 'journal'> }[] = [
    {
      name: 'load, update failed: after the new volume is torn down, its spec still there',
      spec: 'libvirt-update:error,rollback:crash',
      from: null,
      to: ISO_A,
      atCrash: { source: null, drive: { entries: [{ state: 'loading', pdiv: ISO_A }], change: null }, active: [] },
    },
    {
      name: 'load, prepare failed: after the loading spec is removed',
      spec: 'prepare:error,rollback:crash',
      from: null,
      to: ISO_A,
      atCrash: { source: null, drive: settled(null), active: [] },
    },
    {
      name: 'change, update failed: after the new volume is torn down, both specs still marked',
      spec: 'libvirt-update:error,rollback:crash',
      from: ISO_A,
      to: ISO_B,
      atCrash: { source: { type: 'block', path: blockPath(ISO_A) }, drive: { entries: [{ state: 'ejecting', pdiv: ISO_A }, { state: 'loading', pdiv: ISO_B }], change: null }, active: [ISO_A.volumeID] },
    },
    {
      name: 'change, prepare failed: after the specs are restored',
      spec: 'prepare:error,rollback:crash',
      from: ISO_A,
      to: ISO_B,
      atCrash: { source: { type: 'block', path: blockPath(ISO_A) }, drive: settled(ISO_A), active: [ISO_A.volumeID] },
    },
    {
      name: 'eject, update failed: after state="ejecting" is removed',
      spec: 'libvirt-update:error,rollback:crash',
      from: ISO_A,
      to: null,
      atCrash: { source: { type: 'block', path: blockPath(ISO_A) }, drive: settled(ISO_A), active: [ISO_A.volumeID] },
    },
    {
      name: 'eject, teardown failed: after the ejected spec is removed (the drive is empty)',
      spec: 'teardown:error,rollback:crash',
      from: ISO_A,
      to: null,
      atCrash: { source: null, drive: settled(null), active: [ISO_A.volumeID] },
    },
  ];

  for (const c of cases) {
    it(`${c.name}; the restarted worker ends consistent`, async () => {
      const h = host(c.spec, { a: c.from });
      const { cmd } = h.run(VM_A, c.to);
      const seen = await h.crashed;
      expect(seen).toEqual({ ...c.atCrash, journal: 'pending' });
      const r = resultOf(await h.restart(cmd));
      // Nothing reached the drive before the crash but (eject/teardown) the ejection itself,
      // so the redelivery runs the command; the drive is changed once in all.
      expect(r).toMatchObject({ outcome: 'completed', current: c.to });
      const final = h.look(VM_A, cmd.commandId);
      expect(final.drive).toEqual(settled(c.to));
      expect(final.source).toEqual(c.to === null ? null : { type: 'block', path: blockPath(c.to) });
      expect(h.updates).toHaveLength(1);
    });
  }

  it('does not fire when the first undo step failed (nor at the steps after it)', async () => {
    const h = host('libvirt-update:error,rollback:crash', { a: null });
    h.storage.failNext('teardown');
    const { done } = h.run(VM_A, ISO_A);
    const r = resultOf(await done);
    expect(r).toMatchObject({ outcome: 'failed', error: { code: 'CHANGE_FAILED' } });
    expect(r.warnings.map((x) => x.code)).toEqual(['TEARDOWN_FAILED']);
  });

  it('does not fire on flows that fail without an undo step', async () => {
    const h = host('metadata-begin:error,rollback:crash', { a: null });
    const r = resultOf(await h.run(VM_A, ISO_A).done);
    expect(r).toMatchObject({ outcome: 'failed', error: { code: 'INTERNAL' } });
  });
});

describe('scoping by VM', () => {
  it('prepare:error@A fails A only; B completes', async () => {
    const h = host(`prepare:error@${VM_A}`, { a: null, b: null });
    const [a, b] = await Promise.all([h.run(VM_A, ISO_A).done, h.run(VM_B, ISO_B).done]);
    expect(resultOf(a)).toMatchObject({ outcome: 'failed', error: { code: 'PREPARE_FAILED' } });
    expect(resultOf(b)).toMatchObject({ outcome: 'completed', current: ISO_B });
  });

  it('teardown scoped by VM (teardownVolume gets the drive ref)', async () => {
    const h = host(`teardown:error@${VM_B}`, { a: ISO_A, b: ISO_B });
    const [a, b] = await Promise.all([h.run(VM_A, null).done, h.run(VM_B, null).done]);
    expect(resultOf(a)).toMatchObject({ outcome: 'completed', action: 'eject' });
    expect(resultOf(b)).toMatchObject({ outcome: 'failed', action: 'eject', error: { code: 'TEARDOWN_FAILED' }, current: null });
  });

  it('journal-pending:crash@B does not fire for A, and fires for B', async () => {
    const h = host(`journal-pending:crash@${VM_B}`, { a: null, b: null });
    expect(resultOf(await h.run(VM_A, ISO_A).done)).toMatchObject({ outcome: 'completed' });
    h.run(VM_B, ISO_B);
    expect((await h.crashed).journal).toBe('pending');
  });
});
