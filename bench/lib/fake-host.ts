import { toCdromError } from '../../src/domain/errors.js';
import { FakeHypervisor } from '../../test/fakes/hypervisor.fake.js';
import { FakeStorage } from '../../test/fakes/storage.fake.js';
import type { HostMemory, HostOps, HostReply, HostRequest } from './remote-ports.js';

/**
 * The memory bench's hypervisor and storage, in their own process (forked by
 * remote-ports.ts, with --expose-gc): a FakeHypervisor and a FakeStorage answering the
 * requests of the IPC channel. It exits when the channel closes, so a worker that dies
 * takes it along.
 */

if (process.send === undefined) throw new Error('fake-host.ts is forked by bench/lib/remote-ports.ts, with an IPC channel');

const hv = new FakeHypervisor();
const storage = new FakeStorage();
let vmIds: readonly string[] = [];

function memory(dropVms: boolean): HostMemory {
  if (dropVms) {
    for (const vmId of vmIds) hv.removeVm(vmId);
    vmIds = [];
  }
  const gc = (globalThis as { gc?: () => void }).gc;
  if (gc === undefined) throw new Error('the fake host runs with --expose-gc');
  gc();
  gc();
  const m = process.memoryUsage();
  return { rss: m.rss, heapUsed: m.heapUsed, heapTotal: m.heapTotal, maxRss: process.resourceUsage().maxRSS * 1024, vms: vmIds.length };
}

async function handle(req: HostRequest): Promise<HostOps[HostRequest['op']]['value']> {
  switch (req.op) {
    case 'setup': {
      const { metadata, volumes } = req.args;
      for (const vmId of req.args.vmIds) hv.addVm(vmId, { metadata });
      for (const v of volumes) storage.addVolume(v);
      vmIds = [...vmIds, ...req.args.vmIds];
      return vmIds.length;
    }
    case 'readDrive':
      return hv.readDrive(req.args.vmId, req.args.drive);
    case 'updateDevice':
      await hv.updateDevice(req.args.vmId, req.args.drive, req.args.source);
      return null;
    case 'getMetadata':
      return hv.getMetadata(req.args.vmId, req.args.ns);
    case 'setMetadata':
      await hv.setMetadata(req.args.vmId, req.args.ns, req.args.xml);
      return null;
    case 'prepareVolume':
      return storage.prepareVolume(req.args.media);
    case 'teardownVolume':
      return storage.teardownVolume(req.args.media);
    case 'volumeActivation':
      return storage.volumeActivation(req.args.media);
    case 'memory':
      return memory(req.args.dropVms);
  }
}

const reply = (r: HostReply): void => {
  process.send?.(r);
};

process.on('message', (m) => {
  const req = m as HostRequest;
  handle(req).then(
    (value) => reply({ id: req.id, ok: true, value }),
    (err: unknown) => reply({ id: req.id, ok: false, error: toCdromError(err).toInfo() }),
  );
});
process.on('disconnect', () => process.exit(0));
