import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DomainEvent, MetadataNamespace } from '../../src/domain/ports.js';
import { LibvirtHypervisor } from '../../src/infra/libvirt/libvirt.hypervisor.js';
import { loadVirt, type NativeConnection, type NativeDomain, type NativeEvent, type VirtBinding } from '../../src/infra/libvirt/virt.native.js';
import { bind } from '../support/proxy.js';
import { LIBVIRT_URI, TestVms, type TestVm } from '../support/vm.js';

/**
 * The adapter keeps each domain's [active, persistent] (which definitions a write must
 * reach) instead of asking libvirt before every write. These tests change the domain
 * under it — destroy, start, define — and check where every write lands, in libvirt's
 * live and persistent XML. The binding is the real one, wrapped to count the state
 * queries and, for some tests, to swallow lifecycle events, so that only libvirt's
 * refusal of a stale write can correct the adapter.
 */

const NS: MetadataNamespace = { uri: 'http://example.org/cdrom-worker-test/state-cache', prefix: 'sc', key: 'mark' };
const mark = (n: number): string => `<sc:mark xmlns:sc="${NS.uri}"><sc:n>${n}</sc:n></sc:mark>`;
const k = loadVirt().constants;
const run = promisify(execFile);

interface Probe {
  /** isActive + isPersistent calls made through the binding */
  stateQueries: number;
}

/** The real addon, counting state queries; `lifecycle: false` drops lifecycle events. */
function probedBinding(probe: Probe, opts: { lifecycle: boolean }): VirtBinding {
  const real = loadVirt();
  const domain = (d: NativeDomain): NativeDomain =>
    bind(d, {
      isActive: () => {
        probe.stateQueries += 1;
        return d.isActive();
      },
      isPersistent: () => {
        probe.stateQueries += 1;
        return d.isPersistent();
      },
    });
  return {
    ...real,
    open: async (uri, listener, interval, count): Promise<NativeConnection> => {
      const conn = await real.open(uri, (e) => (opts.lifecycle || e.kind !== 'lifecycle' ? listener(e) : undefined), interval, count);
      return bind(conn, { lookupByUUIDString: async (uuid: string) => domain(await conn.lookupByUUIDString(uuid)) });
    },
  };
}

async function live(vm: TestVm): Promise<string> {
  return vm.domain.xmlDesc(0);
}

async function config(vm: TestVm): Promise<string> {
  return vm.domain.xmlDesc(k.VIR_DOMAIN_XML_INACTIVE);
}

const holds = (n: number): string => `<sc:n>${n}</sc:n>`;

describe('LibvirtHypervisor domain state cache', () => {
  let vms: TestVms;
  let iso: string;
  const undo: (() => Promise<unknown>)[] = [];

  beforeAll(async () => {
    vms = await TestVms.open();
    iso = await vms.makeIso(await vms.scratchDir(), 'cdw-sc');
  });
  afterEach(async () => {
    for (const u of undo.splice(0).reverse()) await u().catch(() => undefined);
  });
  afterAll(async () => {
    await vms?.cleanup();
  });

  async function open(opts: { lifecycle: boolean }): Promise<{ h: LibvirtHypervisor; probe: Probe }> {
    const probe: Probe = { stateQueries: 0 };
    const h = await LibvirtHypervisor.open({ uri: LIBVIRT_URI, binding: probedBinding(probe, opts) });
    undo.push(() => h.close());
    return { h, probe };
  }

  function lifecycle(h: LibvirtHypervisor, vmId: string, event: Extract<DomainEvent, { kind: 'lifecycle' }>['event']): Promise<void> {
    return new Promise((resolve) => {
      const off = h.onEvent((e) => {
        if (e.kind === 'lifecycle' && e.vmId.toLowerCase() === vmId.toLowerCase() && e.event === event) {
          off();
          resolve();
        }
      });
    });
  }

  it('asks for the state once, not per write, until a lifecycle event or a reconnect', async () => {
    const vm = await vms.create({ persistent: true });
    const { h, probe } = await open({ lifecycle: true });
    for (let i = 1; i <= 10; i++) await h.setMetadata(vm.uuid, NS, mark(i));
    await h.updateDevice(vm.uuid, 'sdc', { type: 'file', path: iso });
    await h.updateDevice(vm.uuid, 'sdc', null);
    expect(probe.stateQueries).toBe(2); // isActive + isPersistent, once
    expect(await live(vm)).toContain(holds(10));
    expect(await config(vm)).toContain(holds(10));

    // suspend/resume: lifecycle events, no change of where writes go, but read again
    const resumed = lifecycle(h, vm.uuid, 'resumed');
    await run('virsh', ['-c', LIBVIRT_URI, 'suspend', vm.uuid]);
    await run('virsh', ['-c', LIBVIRT_URI, 'resume', vm.uuid]);
    await resumed;
    await h.setMetadata(vm.uuid, NS, mark(11));
    await h.setMetadata(vm.uuid, NS, mark(12));
    expect(probe.stateQueries).toBe(4);

    // the events connection lost (libvirtd gone, as libvirt's close callback says): nothing
    // cached is trusted any more, and the reconnect is announced to the listeners
    const internal = h as unknown as { events: { generation: number; onNative(generation: number, e: NativeEvent): void } };
    const reconnected = new Promise<void>((resolve) => {
      const off = h.onEvent((e) => {
        if (e.kind === 'reconnected') {
          off();
          resolve();
        }
      });
    });
    internal.events.onNative(internal.events.generation, { kind: 'close', event: k.VIR_CONNECT_CLOSE_REASON_EOF, detail: 0 });
    await h.setMetadata(vm.uuid, NS, mark(13));
    expect(probe.stateQueries).toBe(6); // read, not cached: no events while the link is down
    await reconnected;
    await h.setMetadata(vm.uuid, NS, mark(14));
    await h.setMetadata(vm.uuid, NS, mark(15));
    expect(probe.stateQueries).toBe(8);
    expect(await live(vm)).toContain(holds(15));
    expect(await config(vm)).toContain(holds(15));
  });

  it('writes follow a persistent domain that is destroyed and started again', async () => {
    const vm = await vms.create({ persistent: true });
    const { h } = await open({ lifecycle: true });
    await h.setMetadata(vm.uuid, NS, mark(1));
    expect(await live(vm)).toContain(holds(1));
    expect(await config(vm)).toContain(holds(1));

    await vm.domain.destroy();
    await h.setMetadata(vm.uuid, NS, mark(2));
    expect(await config(vm)).toContain(holds(2));

    await vm.domain.create();
    await h.setMetadata(vm.uuid, NS, mark(3));
    await h.updateDevice(vm.uuid, 'sdc', { type: 'file', path: iso });
    expect(await live(vm)).toContain(holds(3));
    expect(await config(vm)).toContain(holds(3));
    expect(await h.readDrive(vm.uuid, 'sdc')).toEqual({ type: 'file', path: iso });
    expect(await config(vm)).toContain(iso);
  });

  it('without lifecycle events, a write libvirt refuses for a stale "running" is made again where it belongs', async () => {
    const vm = await vms.create({ persistent: true });
    const { h, probe } = await open({ lifecycle: false });
    await h.setMetadata(vm.uuid, NS, mark(1));
    expect(probe.stateQueries).toBe(2);

    // The adapter still believes the domain runs: libvirt refuses LIVE, the state is read
    // again and the write goes to the persistent definition.
    await vm.domain.destroy();
    await h.setMetadata(vm.uuid, NS, mark(2));
    expect(probe.stateQueries).toBe(4);
    expect(await config(vm)).toContain(holds(2));

    // "Not running" is never kept: after a start nobody told the adapter about, the
    // next write reaches the running domain too, not only its persistent definition.
    await vm.domain.create();
    await h.setMetadata(vm.uuid, NS, mark(3));
    expect(await live(vm)).toContain(holds(3));
    expect(await config(vm)).toContain(holds(3));

    // Same for a medium change: refused live, the disk is read again from the persistent
    // definition and changed there.
    await vm.domain.destroy();
    await h.updateDevice(vm.uuid, 'sdc', { type: 'file', path: iso });
    expect(await config(vm)).toContain(iso);
    await vm.domain.create();
    expect(await h.readDrive(vm.uuid, 'sdc')).toEqual({ type: 'file', path: iso });
    await h.updateDevice(vm.uuid, 'sdc', null);
    expect(await h.readDrive(vm.uuid, 'sdc')).toBeNull();
    expect(await config(vm)).not.toContain(iso);
  });

  it('writes reach the persistent definition of a running transient domain once it is defined', async () => {
    const vm = await vms.create({ persistent: false });
    const { h } = await open({ lifecycle: true });
    await h.setMetadata(vm.uuid, NS, mark(1));
    expect(await live(vm)).toContain(holds(1));

    const defined = lifecycle(h, vm.uuid, 'defined');
    // TestVms only destroys a domain it created transient: make it transient again first
    undo.push(async () => (await vms.conn.lookupByUUIDString(vm.uuid)).undefine(0));
    await vms.conn.defineXML(await config(vm));
    await defined;
    await h.setMetadata(vm.uuid, NS, mark(2));
    expect(await live(vm)).toContain(holds(2));
    expect(await config(vm)).toContain(holds(2));

    // and back: undefined while running, a write with CONFIG is refused and made live only
    await vm.domain.undefine(0);
    await h.setMetadata(vm.uuid, NS, mark(3));
    expect(await live(vm)).toContain(holds(3));
    expect(await vm.domain.isPersistent()).toBe(false);
  });
});
