import { describe, expect, it } from 'vitest';
import { LibvirtHypervisor } from '../../src/infra/libvirt/libvirt.hypervisor.js';
import { loadVirt, type NativeConnection, type NativeDomain, type VirtBinding } from '../../src/infra/libvirt/virt.native.js';

/**
 * What the adapter makes of a drive whose live XML names a source with the tray open
 * (libvirt's view after QEMU dropped a refused medium): the block info from QEMU decides.
 * An answer of "no medium" (capacity 0, or QEMU's own error) reads as empty; not knowing
 * (a job-lock timeout, a lost connection) must not: it is a retryable error, or a
 * reconciler would take a loaded drive for an empty one. A stand-in binding, no libvirtd.
 */

const k = loadVirt().constants;
const VM = '6f1c2b3a-4d5e-4f60-8a7b-9c0d1e2f3a4b';
const XML = `<domain type='kvm'><name>stand-in</name><uuid>${VM}</uuid><devices>
<disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='/iso/a.iso'/><target dev='sdc' bus='sata' tray='open'/><readonly/></disk>
</devices></domain>`;

function nativeError(code: number, message: string): Error {
  return Object.assign(new Error(message), { libvirt: true, code, domain: k.VIR_FROM_QEMU, level: 2 });
}

function binding(blockInfo: () => Promise<{ capacity: number; allocation: number; physical: number }>): VirtBinding {
  const dom = { uuid: VM, name: 'stand-in', xmlDesc: () => Promise.resolve(XML), getBlockInfo: blockInfo } as unknown as NativeDomain;
  const conn = {
    close: () => Promise.resolve(),
    registerDomainEvents: () => Promise.resolve(),
    lookupByUUIDString: () => Promise.resolve(dom),
  } as unknown as NativeConnection;
  return { constants: k, libVersion: () => 0, open: () => Promise.resolve(conn) } as unknown as VirtBinding;
}

async function readWith(blockInfo: () => Promise<{ capacity: number; allocation: number; physical: number }>) {
  const h = await LibvirtHypervisor.open({ uri: 'stand-in:///', binding: binding(blockInfo), callTimeoutMs: 1_000 });
  try {
    return await h.readDrive(VM, 'sdc');
  } finally {
    await h.close();
  }
}

describe('libvirt adapter: the drive QEMU really has, tray open', () => {
  it('a medium QEMU reports is held', async () => {
    expect(await readWith(() => Promise.resolve({ capacity: 2048, allocation: 2048, physical: 2048 }))).toEqual({ type: 'file', path: '/iso/a.iso' });
  });

  it("no medium in QEMU (capacity 0, or QEMU's error) reads as empty", async () => {
    expect(await readWith(() => Promise.resolve({ capacity: 0, allocation: 0, physical: 0 }))).toBeNull();
    expect(await readWith(() => Promise.reject(nativeError(k.VIR_ERR_OPERATION_FAILED, 'no medium (stand-in)')))).toBeNull();
  });

  it('a job-lock timeout or a lost connection is not "empty": it fails, retryable', async () => {
    await expect(readWith(() => Promise.reject(nativeError(k.VIR_ERR_OPERATION_TIMEOUT, 'cannot acquire state change lock (stand-in)')))).rejects.toMatchObject({ retryable: true });
    await expect(readWith(() => Promise.reject(Object.assign(nativeError(k.VIR_ERR_SYSTEM_ERROR, 'connection reset (stand-in)'), { domain: k.VIR_FROM_RPC })))).rejects.toMatchObject({ retryable: true });
  });

  it('a block-info call that never answers fails with TIMEOUT at the call deadline', async () => {
    await expect(readWith(() => new Promise(() => undefined))).rejects.toMatchObject({ code: 'TIMEOUT', retryable: true });
  });
});
