/**
 * Helpers of scripts/demo.sh (run with `node --import tsx scripts/demo.ts <what> …`):
 *
 *   storage-vars FILE         shell assignments (VOL_A, IMG_A, LABEL_A, VOL_B, …) from
 *                             the JSON `test-storage.sh create-block` printed
 *   wait-ready PORT SECONDS   wait until the worker's /readyz answers 200
 *   show-drive VM DRIVE URI   what the VM's CD-ROM holds now, as libvirt shows it
 *   metrics PORT              the worker's own cdrom_* metrics (no buckets, no process metrics)
 *   delete-queues HOST URL    delete the host's command and dead-letter queues
 */
import { execFile } from 'node:child_process';
import { readFileSync, realpathSync } from 'node:fs';
import { promisify } from 'node:util';
import { connect } from 'amqplib';
import { XMLParser } from 'fast-xml-parser';
import { removeHostQueues } from '../src/consumers/topology.js';
import { UUID_RE } from '../src/domain/media.js';

const run = promisify(execFile);

interface StorageJson {
  readonly vg: string;
  readonly volumes: readonly { readonly imageID: string; readonly volumeID: string; readonly label: string }[];
}

function storageVars(file: string): void {
  const s = JSON.parse(readFileSync(file, 'utf8')) as StorageJson;
  const [a, b] = s.volumes;
  if (a === undefined || b === undefined) throw new Error(`${file} describes fewer than two volumes`);
  const out: Record<string, string> = { VG: s.vg, IMG_A: a.imageID, VOL_A: a.volumeID, LABEL_A: a.label, IMG_B: b.imageID, VOL_B: b.volumeID, LABEL_B: b.label };
  for (const [k, v] of Object.entries(out)) {
    // Everything printed here is eval'd by bash: only UUIDs and plain labels pass.
    if (!UUID_RE.test(v) && !/^[A-Z0-9_]{1,32}$/.test(v)) throw new Error(`unexpected ${k} ${JSON.stringify(v)}`);
    console.log(`${k}=${v}`);
  }
}

async function waitReady(port: number, seconds: number): Promise<void> {
  const until = Date.now() + seconds * 1000;
  for (;;) {
    try {
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > until) throw new Error(`worker not ready on port ${port} after ${seconds} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function isoLabel(path: string): Promise<string> {
  try {
    const { stdout } = await run('blkid', ['-p', '-o', 'value', '-s', 'LABEL', path]);
    return stdout.trim() || '(no label)';
  } catch {
    return '(unreadable)';
  }
}

async function showDrive(vm: string, drive: string, uri: string): Promise<void> {
  const { stdout: list } = await run('virsh', ['-q', '-c', uri, 'domblklist', vm, '--details']);
  const row = list
    .split('\n')
    .map((l) => l.trim().split(/\s+/))
    .find((cols) => cols[2] === drive);
  const source = row?.[3] ?? '-';
  console.log(`  virsh domblklist ${vm}: ${row?.join('  ') ?? `(no ${drive})`}`);
  if (source === '-' || source === '') {
    console.log('  tray: empty');
  } else {
    let target = source;
    try {
      target = realpathSync(source);
    } catch {
      target = '(missing)';
    }
    console.log(`  source ${source}`);
    console.log(`    -> ${target}, ISO label: ${await isoLabel(source)}`);
  }
  const { stdout: md } = await run('virsh', ['-q', '-c', uri, 'metadata', vm, 'http://ovirt.org/vm/1.0']);
  const parser = new XMLParser({ ignoreAttributes: false, removeNSPrefix: true, attributeNamePrefix: '@', isArray: (name) => name === 'device' });
  const doc = parser.parse(md) as { vm?: { device?: Record<string, unknown>[] } };
  for (const d of doc.vm?.device ?? []) {
    if (d['@name'] !== drive) continue;
    const state = typeof d['@state'] === 'string' ? ` state=${d['@state']}` : '';
    const vol = typeof d['volumeID'] === 'string' ? ` volumeID=${d['volumeID']}` : ' (empty)';
    console.log(`  metadata <ovirt-vm:device name="${drive}">${vol}${state}`);
  }
}

async function metrics(port: number): Promise<void> {
  const body = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  for (const line of body.split('\n')) {
    if (!line.startsWith('cdrom_') || line.startsWith('cdrom_worker_') || line.includes('_bucket{')) continue;
    console.log(`  ${line}`);
  }
}

async function deleteQueues(host: string, url: string): Promise<void> {
  const model = await connect(url, { noDelay: true });
  try {
    await removeHostQueues(model, host);
  } finally {
    await model.close().catch(() => undefined);
  }
}

const [what, ...args] = process.argv.slice(2);
const arg = (i: number): string => {
  const v = args[i];
  if (v === undefined) throw new Error(`${what ?? ''}: missing argument ${i + 1}`);
  return v;
};
switch (what) {
  case 'storage-vars':
    storageVars(arg(0));
    break;
  case 'wait-ready':
    await waitReady(Number(arg(0)), Number(arg(1)));
    break;
  case 'show-drive':
    await showDrive(arg(0), arg(1), arg(2));
    break;
  case 'metrics':
    await metrics(Number(arg(0)));
    break;
  case 'delete-queues':
    await deleteQueues(arg(0), arg(1));
    break;
  default:
    console.error('usage: demo.ts storage-vars FILE | wait-ready PORT SECONDS | show-drive VM DRIVE URI | metrics PORT | delete-queues HOST URL');
    process.exit(2);
}
