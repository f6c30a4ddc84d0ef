import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { buildXml, element, text, type XmlElement } from '../../src/domain/metadata/xml-tree.js';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { loadVirt, type NativeConnection, type NativeDomain } from '../../src/infra/libvirt/virt.native.js';

const run = promisify(execFile);

/**
 * Test VMs, ISOs and loop devices for integration tests. Everything made here is
 * recorded and `cleanup()` removes exactly that — never another domain, never a loop
 * device someone else attached — so call it from afterAll, where it runs even when tests
 * failed.
 */

export const TEST_VM_PREFIX = 'cdw-test-';
export const LIBVIRT_URI = process.env.CDROM_LIBVIRT_URI ?? 'qemu:///system';

export interface TestVm {
  readonly name: string;
  readonly uuid: string;
  readonly persistent: boolean;
  readonly domain: NativeDomain;
}

/** The design page's empty CD-ROM, as a VM definition (KVM when the host has it). */
export function testVmXml(name: string, uuid: string, opts: { memoryMiB?: number } = {}): string {
  const memoryMiB = opts.memoryMiB ?? 128;
  if (!Number.isInteger(memoryMiB) || memoryMiB < 16) throw new Error(`memoryMiB must be an integer ≥ 16, got ${memoryMiB}`);
  const el = (tag: string, attrs: Record<string, string> = {}, children: XmlElement[] = []): XmlElement => element(tag, attrs, children);
  const t = (tag: string, value: string, attrs: Record<string, string> = {}): XmlElement => element(tag, attrs, [text(value)]);
  const domain = el('domain', { type: existsSync('/dev/kvm') ? 'kvm' : 'qemu' }, [
    t('name', name),
    t('uuid', uuid),
    t('memory', String(memoryMiB), { unit: 'MiB' }),
    t('vcpu', '1'),
    el('os', {}, [t('type', 'hvm', { arch: 'x86_64', machine: 'q35' })]),
    el('metadata', {}, [
      el(`${OVIRT_VM_NS.prefix}:vm`, { [`xmlns:${OVIRT_VM_NS.prefix}`]: OVIRT_VM_NS.uri }, [
        el(`${OVIRT_VM_NS.prefix}:device`, { devtype: 'disk', name: 'sdc' }),
      ]),
    ]),
    t('on_crash', 'destroy'),
    el('devices', {}, [
      el('disk', { type: 'file', device: 'cdrom' }, [
        el('driver', { name: 'qemu', error_policy: 'report' }),
        el('source', { startupPolicy: 'optional' }),
        el('target', { dev: 'sdc', bus: 'sata' }),
        el('readonly'),
        el('alias', { name: `ua-${randomUUID()}` }),
        el('address', { type: 'drive', controller: '0', bus: '0', target: '0', unit: '2' }),
      ]),
      el('video', {}, [el('model', { type: 'none' })]),
      el('memballoon', { model: 'none' }),
    ]),
  ]);
  return buildXml(domain);
}

export class TestVms {
  private readonly vms: TestVm[] = [];
  private readonly loops: string[] = [];
  private readonly dirs: string[] = [];

  private constructor(readonly conn: NativeConnection) {}

  static async open(uri = LIBVIRT_URI): Promise<TestVms> {
    const conn = await loadVirt().open(uri, () => undefined, 0, 0);
    return new TestVms(conn);
  }

  /** Starts a new VM named `cdw-test-…`; persistent ones are defined, others created. */
  async create(opts: { persistent?: boolean } = {}): Promise<TestVm> {
    const persistent = opts.persistent ?? true;
    const uuid = randomUUID();
    const name = `${TEST_VM_PREFIX}${uuid.slice(0, 8)}`;
    const xml = testVmXml(name, uuid);
    let domain: NativeDomain;
    if (persistent) {
      domain = await this.conn.defineXML(xml);
      this.vms.push({ name, uuid, persistent, domain });
      await domain.create();
    } else {
      domain = await this.conn.createXML(xml);
      this.vms.push({ name, uuid, persistent, domain });
    }
    return { name, uuid, persistent, domain };
  }

  /** A world-readable scratch directory (QEMU runs as libvirt-qemu). */
  async scratchDir(): Promise<string> {
    const dir = await mkdtemp(join(tmpdir(), 'cdw-test-'));
    await chmod(dir, 0o755);
    this.dirs.push(dir);
    return dir;
  }

  /** A small ISO image made with genisoimage. */
  async makeIso(dir: string, label: string): Promise<string> {
    const content = join(dir, `${label}.d`);
    await mkdir(content, { recursive: true });
    await writeFile(join(content, 'README.TXT'), `cdrom-worker test medium ${label}\n`);
    const iso = join(dir, `${label}.iso`);
    await run('genisoimage', ['-quiet', '-V', label.slice(0, 32), '-o', iso, content]);
    await chmod(iso, 0o644);
    return iso;
  }

  /** A loop device over `file`, detached by cleanup(). */
  async attachLoop(file: string): Promise<string> {
    const { stdout } = await run('losetup', ['-f', '--show', '-r', file]);
    const dev = stdout.trim();
    this.loops.push(file);
    return dev;
  }

  async cleanup(): Promise<void> {
    const errors: unknown[] = [];
    for (const vm of this.vms.splice(0)) {
      try {
        if (await vm.domain.isActive()) await vm.domain.destroy();
      } catch (err) {
        errors.push(err);
      }
      if (vm.persistent) {
        try {
          await vm.domain.undefine(0);
        } catch (err) {
          errors.push(err);
        }
      }
    }
    // Only the loop devices over our own files: `losetup -j FILE` names exactly those.
    for (const file of this.loops.splice(0)) {
      try {
        const { stdout } = await run('losetup', ['-j', file]);
        for (const line of stdout.split('\n')) {
          const dev = line.split(':')[0]?.trim();
          if (dev !== undefined && dev.startsWith('/dev/loop')) await run('losetup', ['-d', dev]);
        }
      } catch (err) {
        errors.push(err);
      }
    }
    for (const dir of this.dirs.splice(0)) await rm(dir, { recursive: true, force: true });
    await this.conn.close();
    if (errors.length > 0) throw new AggregateError(errors, 'test VM cleanup failed');
  }
}
