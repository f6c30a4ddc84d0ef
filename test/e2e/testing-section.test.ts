import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ResultEvent } from '../../src/contracts/schemas.js';
import type { Pdiv } from '../../src/domain/media.js';
import { canUseLoopLvm, isoLabel } from '../support/storage.js';
import { TrayWatch } from '../support/tray.js';
import { TestVms, type TestVm } from '../support/vm.js';
import {
  E2eStorage,
  Engine,
  FOREIGN_MD_SEEN,
  acquireE2eLock,
  compileWorker,
  changeCd,
  domblklist,
  driveMetadata,
  openAdapters,
  runCli,
  setDrive,
  onlyDomains,
  startWorkerProcess,
  uniqueHostId,
  type WorkerEnv,
  type WorkerProcess,
} from '../support/e2e.js';

/**
 * The design page's "Testing" section, on the real stack: a block storage domain with
 * ISOs on loop-backed LVM, a running VM with a CD-ROM, and the worker as a process.
 * Commands go through `cdrom.commands`; every scenario checks what libvirt shows
 * (`virsh domblklist`), the VM metadata (`virsh metadata`), the volume's activation on
 * the host (link and loop device) and the result event on `cdrom.events`.
 */

describe.skipIf(!canUseLoopLvm())('design page, Testing section (real RabbitMQ, libvirt/QEMU, loop-backed LVM, worker process)', () => {
  const hostId = uniqueHostId('testing');
  let release: (() => Promise<void>) | null = null;
  let compiled: { entry: string; remove: () => Promise<void> } | null = null;
  let storage: E2eStorage | null = null;
  let vms: TestVms | null = null;
  let vm: TestVm;
  let engine: Engine | null = null;
  let worker: WorkerProcess | null = null;
  let tray: TrayWatch | null = null;
  let env: WorkerEnv;
  let isoA: Pdiv;
  let isoB: Pdiv;

  beforeAll(async () => {
    release = await acquireE2eLock();
    compiled = await compileWorker();
    storage = await E2eStorage.create(2);
    isoA = storage.pdiv(0);
    isoB = storage.pdiv(1);
    vms = await TestVms.open();
    vm = await vms.create();
    // The VM's metadata as the engine writes it, with content that is not the worker's.
    const adapters = await openAdapters(storage);
    await setDrive(adapters, storage, vm.uuid, null);
    await adapters.hypervisor.close();
    engine = await Engine.open(hostId);
    tray = await TrayWatch.open([vm.uuid]);
    env = { hostId, storageRoot: storage.root, entry: compiled.entry, domainFilter: onlyDomains(vm.name) };
    worker = await startWorkerProcess(env);
  }, 180_000);

  afterAll(async () => {
    const exit = await worker?.stop();
    await engine?.close();
    await tray?.close();
    const errors: unknown[] = [];
    await vms?.cleanup().catch((err: unknown) => errors.push(err));
    await storage?.remove().catch((err: unknown) => errors.push(err));
    await compiled?.remove();
    await release?.();
    if (exit !== undefined && exit.code !== 0) errors.push(new Error(`worker exited with ${JSON.stringify(exit)}:\n${worker?.logs().slice(-3000)}`));
    if (errors.length > 0) throw new AggregateError(errors, 'end-to-end cleanup failed');
  }, 120_000);

  /** Sends a command and waits for its event; `changes`: the media changes the VM must see meanwhile. */
  async function send(media: Pdiv | null, commandId?: string, changes = 1): Promise<ResultEvent> {
    const cmd = changeCd(vm.uuid, media, commandId);
    let events: ResultEvent[] = [];
    const seen = await (tray as TrayWatch).count(vm.uuid, async () => {
      await (engine as Engine).send(cmd);
      events = await (engine as Engine).waitFor(cmd.commandId, 1, 60_000);
    });
    expect(seen, 'media changes the VM saw (tray-change events)').toBe(changes);
    return events[events.length - 1] as ResultEvent;
  }

  /** The CD-ROM as libvirt, the metadata and the host show it, checked against `holding`. */
  async function expectDrive(holding: Pdiv | null): Promise<void> {
    const s = storage as E2eStorage;
    const blk = await domblklist(vm.name);
    expect(blk.get('sdc')).toBe(holding === null ? null : s.linkPath(holding));

    const md = await driveMetadata(vm.name);
    expect(md.drive.change).toBeNull();
    // An empty drive keeps its empty element; a loaded one names exactly its PDIV.
    expect(md.drive.entries).toEqual([{ state: null, pdiv: holding }]);
    // Other content of the element is kept.
    expect(md.xml).toMatch(FOREIGN_MD_SEEN);

    const { active, problems } = await s.activeVolumes();
    expect(problems).toEqual([]);
    expect(active).toEqual(holding === null ? [] : [holding.volumeID]);
    if (holding !== null) expect(await isoLabel(s.linkPath(holding))).toBe(s.volumeOf(holding).label);
  }

  it('setup: the VM runs with an empty CD-ROM and the worker is ready', async () => {
    await expectDrive(null);
  });

  it('load CD into CD-ROM: metadata added, ISO volume activated, ISO visible to the VM', async () => {
    const e = await send(isoA);
    expect(e).toMatchObject({ type: 'changeCD.completed', hostId, vmId: vm.uuid, drive: 'sdc', action: 'load', previous: null, current: isoA, error: null, warnings: [] });
    await expectDrive(isoA);
  });

  it('eject CD from CD-ROM: metadata removed, ISO volume deactivated, ISO not visible to the VM', async () => {
    const e = await send(null);
    expect(e).toMatchObject({ type: 'changeCD.completed', action: 'eject', previous: isoA, current: null, error: null, warnings: [] });
    await expectDrive(null);
  });

  it('change CD in CD-ROM: old metadata removed, new added; old volume deactivated, new activated; only the new ISO visible', async () => {
    expect(await send(isoA)).toMatchObject({ type: 'changeCD.completed', action: 'load', current: isoA });
    await expectDrive(isoA);
    const e = await send(isoB);
    expect(e).toMatchObject({ type: 'changeCD.completed', action: 'change', previous: isoA, current: isoB, error: null, warnings: [] });
    await expectDrive(isoB);
  });

  it('the same command sent again answers the same and changes nothing', async () => {
    const cmd = changeCd(vm.uuid, isoA);
    const first = await send(isoA, cmd.commandId);
    expect(first).toMatchObject({ type: 'changeCD.completed', action: 'change', previous: isoB, current: isoA });
    await expectDrive(isoA);
    // Put B back by another command; the repeat of the first must not change the drive again.
    expect(await send(isoB)).toMatchObject({ action: 'change', current: isoB });
    let both: ResultEvent[] = [];
    const changes = await (tray as TrayWatch).count(vm.uuid, async () => {
      await (engine as Engine).send(cmd);
      both = await (engine as Engine).waitFor(cmd.commandId, 2);
    });
    // Not redone: the VM saw no media change (the end state alone would not tell).
    expect(changes).toBe(0);
    const again = both[1] as ResultEvent;
    for (const k of ['type', 'action', 'previous', 'current'] as const) expect(again[k]).toEqual(first[k]);
    await expectDrive(isoB);
  });

  it('status and recover tools report the drive as libvirt, the metadata and the host show it', async () => {
    const status = await runCli(env, ['status', '--json', '--vm', vm.uuid]);
    expect(status.code, status.stderr).toBe(0);
    const doc = JSON.parse(status.stdout) as { domains: { vmId: string; drives: { drive: string; media: unknown; state: string | null; volumes: { pdiv: Pdiv; activation: string; activeVia: string | null; inDrive: boolean }[] }[] }[] };
    expect(doc.domains).toHaveLength(1);
    expect(doc.domains[0]?.drives).toEqual([
      expect.objectContaining({ drive: 'sdc', media: isoB, state: null, volumes: [{ pdiv: isoB, state: null, activation: 'active', activeVia: 'loop', inDrive: true }] }),
    ]);
    const human = await runCli(env, ['status', '--vm', vm.uuid]);
    expect(human.stdout).toContain(`sdc: pdiv ${isoB.poolID}/${isoB.domainID}/${isoB.imageID}/${isoB.volumeID}`);

    const recover = await runCli(env, ['recover', '--vm', vm.uuid]);
    expect(recover.code, recover.stderr).toBe(0);
    expect(recover.stdout).toContain('nothing to recover');
    await expectDrive(isoB);
  });

  it('eject at the end leaves nothing active', async () => {
    expect(await send(null)).toMatchObject({ type: 'changeCD.completed', action: 'eject', previous: isoB, current: null });
    await expectDrive(null);
  });
});
