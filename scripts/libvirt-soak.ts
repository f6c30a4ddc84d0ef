/**
 * Leak check for the libvirt binding: 1,000 updateDeviceFlags + setMetadata cycles on
 * one test VM, with RSS and open file descriptors before and after, and per-call
 * medians. Run: `npx tsx scripts/libvirt-soak.ts [cycles]` (root, libvirtd running).
 */
import { readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { LibvirtHypervisor } from '../src/infra/libvirt/libvirt.hypervisor.js';
import { buildCdromDiskXml, findCdromDisk } from '../src/infra/libvirt/cdrom-disk.xml.js';
import { loadVirt } from '../src/infra/libvirt/virt.native.js';
import { JOURNAL_NS } from '../src/domain/ports.js';
import { LIBVIRT_URI, TestVms } from '../test/support/vm.js';

const cycles = Number(process.argv[2] ?? 1000);

function fds(): number {
  return readdirSync('/proc/self/fd').length;
}
function rssMiB(): number {
  return process.memoryUsage().rss / 1024 / 1024;
}
function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)] ?? NaN;
}
async function timed(into: number[], fn: () => Promise<unknown>): Promise<void> {
  const t = performance.now();
  await fn();
  into.push(performance.now() - t);
}

const vms = await TestVms.open();
try {
  const vm = await vms.create({ persistent: true });
  const dir = await vms.scratchDir();
  const isoA = await vms.makeIso(dir, 'soak-a');
  const isoB = await vms.makeIso(dir, 'soak-b');
  const k = loadVirt().constants;
  const conn = await loadVirt().open(LIBVIRT_URI, () => undefined, 5, 3);
  const dom = await conn.lookupByUUIDString(vm.uuid);
  const h = await LibvirtHypervisor.open({ uri: LIBVIRT_URI });
  const disk = findCdromDisk(await dom.xmlDesc(0), 'sdc');
  if (disk === null) throw new Error('no sdc');
  const xmlA = buildCdromDiskXml(disk.element, { type: 'file', path: isoA });
  const xmlB = buildCdromDiskXml(disk.element, { type: 'file', path: isoB });
  const flags = k.VIR_DOMAIN_AFFECT_LIVE | k.VIR_DOMAIN_AFFECT_CONFIG;

  // Warm up so that one-time allocations (libvirt, V8, the addon) are not counted.
  for (let i = 0; i < 20; i++) {
    await dom.updateDeviceFlags(i % 2 === 0 ? xmlA : xmlB, flags);
    await h.setMetadata(vm.uuid, JOURNAL_NS, `<cdrom:journal xmlns:cdrom="${JOURNAL_NS.uri}"><cdrom:n>${i}</cdrom:n></cdrom:journal>`);
  }
  global.gc?.();
  const rss0 = rssMiB();
  const fd0 = fds();
  const t = { update: [] as number[], setMeta: [] as number[], getMeta: [] as number[], xmlDesc: [] as number[], adapterUpdate: [] as number[] };
  const started = performance.now();
  for (let i = 0; i < cycles; i++) {
    await timed(t.update, () => dom.updateDeviceFlags(i % 2 === 0 ? xmlA : xmlB, flags));
    await timed(t.setMeta, () => dom.setMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, `<journal><n>${i}</n></journal>`, JOURNAL_NS.prefix, JOURNAL_NS.uri, flags));
    await timed(t.getMeta, () => dom.getMetadata(k.VIR_DOMAIN_METADATA_ELEMENT, JOURNAL_NS.uri, k.VIR_DOMAIN_AFFECT_LIVE));
    await timed(t.xmlDesc, () => dom.xmlDesc(0));
    if (i % 10 === 0) await timed(t.adapterUpdate, () => h.updateDevice(vm.uuid, 'sdc', { type: 'file', path: i % 20 === 0 ? isoA : isoB }));
  }
  const elapsed = (performance.now() - started) / 1000;
  global.gc?.();
  const rss1 = rssMiB();
  const fd1 = fds();
  await h.close();
  await conn.close();
  const fmt = (xs: number[]): string => `${median(xs).toFixed(2)} ms (n=${xs.length})`;
  console.log(`cycles               ${cycles} in ${elapsed.toFixed(1)} s`);
  console.log(`RSS                  ${rss0.toFixed(1)} MiB -> ${rss1.toFixed(1)} MiB (${(rss1 - rss0).toFixed(1)} MiB)`);
  console.log(`open fds             ${fd0} -> ${fd1}`);
  console.log(`updateDeviceFlags    median ${fmt(t.update)}`);
  console.log(`setMetadata          median ${fmt(t.setMeta)}`);
  console.log(`getMetadata          median ${fmt(t.getMeta)}`);
  console.log(`XMLDesc              median ${fmt(t.xmlDesc)}`);
  console.log(`adapter updateDevice median ${fmt(t.adapterUpdate)}`);
  if (fd1 > fd0) process.exitCode = 1;
} finally {
  await vms.cleanup();
}
