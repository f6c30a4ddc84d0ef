import { randomUUID } from 'node:crypto';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { FakeHypervisor } from '../fakes/hypervisor.fake.js';
import { hypervisorContract } from './hypervisor.contract.js';

hypervisorContract('FakeHypervisor', () => {
  const fake = new FakeHypervisor();
  const vmId = randomUUID();
  fake.addVm(vmId, {
    drives: { sdc: null },
    metadata: { [OVIRT_VM_NS.uri]: '<ovirt-vm:vm xmlns:ovirt-vm="http://ovirt.org/vm/1.0"><ovirt-vm:device devtype="disk" name="sdc"/></ovirt-vm:vm>' },
  });
  const missing = { type: 'file', path: '/nonexistent/missing.iso' } as const;
  const rejected = { type: 'file', path: '/var/tmp' } as const;
  fake.refuseSource(missing.path, `Cannot access storage file '${missing.path}': No such file or directory`);
  fake.refuseSource(rejected.path, `internal error: unable to execute QEMU command 'blockdev-add': 'file' driver requires '${rejected.path}' to be a regular file`);
  return Promise.resolve({
    hypervisor: fake,
    vmId,
    fileA: { type: 'file', path: '/iso/a.iso' },
    fileB: { type: 'file', path: '/iso/b.iso' },
    block: { type: 'block', path: '/dev/loop7' },
    missing,
    rejected,
    unknownVmId: randomUUID(),
    teardown: () => Promise.resolve(),
  });
});
