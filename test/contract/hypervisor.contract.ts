import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { isCdromError, type CdromError } from '../../src/domain/errors.js';
import { JOURNAL_NS, OVIRT_VM_NS, type DomainEvent, type DriveSource, type HypervisorPort, type MetadataNamespace } from '../../src/domain/ports.js';

/**
 * One conformance suite for HypervisorPort, run against the fake and against libvirt
 * with QEMU, so the fake cannot drift from what the real adapter does.
 */

export interface HypervisorContractEnv {
  readonly hypervisor: HypervisorPort;
  /** A running VM whose CD-ROM `sdc` exists, with ovirt-vm metadata naming it. */
  readonly vmId: string;
  readonly fileA: DriveSource;
  readonly fileB: DriveSource;
  readonly block: DriveSource;
  /** A path that does not exist. */
  readonly missing: DriveSource;
  /** A path that exists but QEMU cannot use as a medium (a directory). */
  readonly rejected: DriveSource;
  /** A UUID no domain has. */
  readonly unknownVmId: string;
  teardown(): Promise<void>;
}

async function failure(p: Promise<unknown>): Promise<CdromError> {
  try {
    await p;
  } catch (err) {
    if (isCdromError(err)) return err;
    throw new Error(`expected a CdromError, got ${String(err)}`, { cause: err });
  }
  throw new Error('expected a failure');
}

/** Whitespace between elements and quote style are formatting, not content. */
function norm(xml: string | null): string | null {
  return xml === null ? null : xml.replace(/>\s+</g, '><').replace(/'/g, '"').trim();
}

function ns(i: number): MetadataNamespace {
  return { uri: `http://example.org/cdrom-worker-test/${i}`, prefix: `t${i}`, key: 'state' };
}

export function hypervisorContract(name: string, setup: () => Promise<HypervisorContractEnv>): void {
  describe(`HypervisorPort contract: ${name}`, () => {
    let env: HypervisorContractEnv;
    let h: HypervisorPort;
    let vm: string;

    beforeAll(async () => {
      env = await setup();
      h = env.hypervisor;
      vm = env.vmId;
    });
    afterAll(async () => {
      await env?.teardown();
    });
    beforeEach(async () => {
      await h.updateDevice(vm, 'sdc', null);
    });

    it('lists the CD-ROM and reads an empty drive as null', async () => {
      expect(await h.listCdroms(vm)).toEqual(['sdc']);
      expect(await h.readDrive(vm, 'sdc')).toBeNull();
      const domains = await h.listDomains();
      expect(domains.find((d) => d.vmId.toLowerCase() === vm.toLowerCase())).toMatchObject({ active: true });
    });

    it('loads a file, changes to a block device and to another file, ejects', async () => {
      await h.updateDevice(vm, 'sdc', env.fileA);
      expect(await h.readDrive(vm, 'sdc')).toEqual(env.fileA);
      await h.updateDevice(vm, 'sdc', env.block);
      expect(await h.readDrive(vm, 'sdc')).toEqual(env.block);
      await h.updateDevice(vm, 'sdc', env.fileB);
      expect(await h.readDrive(vm, 'sdc')).toEqual(env.fileB);
      await h.updateDevice(vm, 'sdc', null);
      expect(await h.readDrive(vm, 'sdc')).toBeNull();
      // Ejecting an empty drive is not an error.
      await h.updateDevice(vm, 'sdc', null);
      expect(await h.readDrive(vm, 'sdc')).toBeNull();
    });

    it('reports a missing VM as VM_NOT_FOUND, not retryable', async () => {
      for (const call of [
        () => h.readDrive(env.unknownVmId, 'sdc'),
        () => h.listCdroms(env.unknownVmId),
        () => h.updateDevice(env.unknownVmId, 'sdc', env.fileA),
        () => h.getMetadata(env.unknownVmId, OVIRT_VM_NS),
        () => h.setMetadata(env.unknownVmId, OVIRT_VM_NS, null),
      ]) {
        const err = await failure(call());
        expect(err.code).toBe('VM_NOT_FOUND');
        expect(err.retryable).toBe(false);
      }
    });

    it('reports a missing drive as DRIVE_NOT_FOUND', async () => {
      expect((await failure(h.readDrive(vm, 'sdz'))).code).toBe('DRIVE_NOT_FOUND');
      expect((await failure(h.updateDevice(vm, 'sdz', env.fileA))).code).toBe('DRIVE_NOT_FOUND');
    });

    it('refuses a missing source path and keeps the old media', async () => {
      await h.updateDevice(vm, 'sdc', env.fileA);
      const err = await failure(h.updateDevice(vm, 'sdc', env.missing));
      expect(err.code).toBe('CHANGE_FAILED');
      expect(err.retryable).toBe(false);
      expect(await h.readDrive(vm, 'sdc')).toEqual(env.fileA);
    });

    it('refuses a source QEMU rejects, and the drive reads what it truly holds', async () => {
      await h.updateDevice(vm, 'sdc', env.fileA);
      const err = await failure(h.updateDevice(vm, 'sdc', env.rejected));
      expect(err.code).toBe('CHANGE_FAILED');
      expect(err.retryable).toBe(false);
      expect(err.message).toMatch(/drive (still )?holds|drive is (now )?empty/);
      // Atomicity: the adapter puts the old medium back when QEMU had dropped it.
      expect(await h.readDrive(vm, 'sdc')).toEqual(env.fileA);
      // And the drive still works.
      await h.updateDevice(vm, 'sdc', env.fileB);
      expect(await h.readDrive(vm, 'sdc')).toEqual(env.fileB);
    });

    it('round-trips ovirt-vm metadata in the prefixed form', async () => {
      const initial = await h.getMetadata(vm, OVIRT_VM_NS);
      expect(norm(initial)).toBe('<ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0"><ovirt-vm:device devtype="disk" name="sdc"/></ovirt-vm:vm>');
      const loading =
        '<ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0">' +
        '<ovirt-vm:device devtype="disk" name="sdc" state="loading">' +
        '<ovirt-vm:domainID>88252cf6-381e-48f0-8795-a294a32c7149</ovirt-vm:domainID>' +
        '<ovirt-vm:imageID>89f05c7d-b961-4935-993f-514499024515</ovirt-vm:imageID>' +
        '<ovirt-vm:poolID>13345997-b94f-42dd-b8ef-a1392f65cebf</ovirt-vm:poolID>' +
        '<ovirt-vm:volumeID>626a493f-5214-4337-b580-96a1ce702c2a</ovirt-vm:volumeID>' +
        '<ovirt-vm:note>a &amp; b &lt;c&gt;</ovirt-vm:note>' +
        '</ovirt-vm:device></ovirt-vm:vm>';
      await h.setMetadata(vm, OVIRT_VM_NS, loading);
      expect(norm(await h.getMetadata(vm, OVIRT_VM_NS))).toBe(norm(loading));
      await h.setMetadata(vm, OVIRT_VM_NS, initial);
      expect(norm(await h.getMetadata(vm, OVIRT_VM_NS))).toBe(norm(initial));
    });

    it('keeps a second namespace apart, and removes it with null', async () => {
      expect(await h.getMetadata(vm, JOURNAL_NS)).toBeNull();
      const journal = '<cdrom:journal xmlns:cdrom="http://ovirt.org/cdrom-worker/1.0"><cdrom:drive name="sdc"/></cdrom:journal>';
      const before = await h.getMetadata(vm, OVIRT_VM_NS);
      await h.setMetadata(vm, JOURNAL_NS, journal);
      expect(norm(await h.getMetadata(vm, JOURNAL_NS))).toBe(norm(journal));
      expect(await h.getMetadata(vm, OVIRT_VM_NS)).toBe(before);
      await h.setMetadata(vm, JOURNAL_NS, null);
      expect(await h.getMetadata(vm, JOURNAL_NS)).toBeNull();
      // Removing what is not there is not an error.
      await h.setMetadata(vm, JOURNAL_NS, null);
    });

    it('loses none of 20 concurrent metadata writes to different namespaces', async () => {
      const ids = Array.from({ length: 20 }, (_, i) => i);
      const body = (i: number): string => `<t${i}:state xmlns:t${i}="${ns(i).uri}"><t${i}:n>${i}</t${i}:n></t${i}:state>`;
      await Promise.all(ids.map((i) => h.setMetadata(vm, ns(i), body(i))));
      const read = await Promise.all(ids.map((i) => h.getMetadata(vm, ns(i))));
      expect(read.map(norm)).toEqual(ids.map((i) => norm(body(i))));
      await Promise.all(ids.map((i) => h.setMetadata(vm, ns(i), null)));
      expect(await Promise.all(ids.map((i) => h.getMetadata(vm, ns(i))))).toEqual(ids.map(() => null));
    });

    it('delivers a tray-change event for the drive', async () => {
      const onEvent = h.onEvent?.bind(h);
      expect(onEvent).toBeDefined();
      if (onEvent === undefined) return;
      const seen: DomainEvent[] = [];
      const got = new Promise<void>((resolve) => {
        const off = onEvent((e) => {
          seen.push(e);
          if (e.kind === 'tray-change' && e.vmId.toLowerCase() === vm.toLowerCase() && e.device === 'sdc') {
            off();
            resolve();
          }
        });
      });
      // Registration is asynchronous on a real hypervisor; change until an event shows.
      for (let i = 0; i < 10 && seen.length === 0; i++) {
        await h.updateDevice(vm, 'sdc', i % 2 === 0 ? env.fileA : null);
        await Promise.race([got, new Promise((r) => setTimeout(r, 200))]);
      }
      await got;
    });
  });
}
