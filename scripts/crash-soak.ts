/**
 * Random-kill soak on the real stack (not part of `npm test`):
 *
 *   npx tsx scripts/crash-soak.ts [--commands 200] [--kills 20] [--max-wait-ms 1500] [--seed N]
 *
 * Two running VMs, one block storage domain on loop-backed LVM (two ISOs of each VM's
 * own and one both use), the worker as a process. All commands are published at once,
 * mixed loads, changes and ejects over both drives; the worker is SIGKILLed at random
 * moments `--kills` times (restarted each time), then left to finish. Checked at the end:
 * every command has a result event, and all events of one commandId agree; every drive
 * holds what its last finished command left in it, with metadata that matches and no
 * `state`; the active volumes are exactly those the drives use. Needs root (loop
 * devices, LVM), libvirtd and RabbitMQ, like the integration tests.
 */
import { randomUUID } from 'node:crypto';
import { parseArgs } from 'node:util';
import type { ChangeCdCommand, ResultEvent } from '../src/contracts/schemas.js';
import type { Pdiv } from '../src/domain/media.js';
import {
  E2eStorage,
  Engine,
  acquireE2eLock,
  compileWorker,
  changeCd,
  observeDrive,
  onlyDomains,
  openAdapters,
  setDrive,
  sleep,
  startWorkerProcess,
  uniqueHostId,
  waitUntil,
  type Adapters,
  type WorkerProcess,
} from '../test/support/e2e.js';
import { TestVms, type TestVm } from '../test/support/vm.js';

const { values } = parseArgs({
  options: {
    commands: { type: 'string', default: '200' },
    kills: { type: 'string', default: '20' },
    'max-wait-ms': { type: 'string', default: '1500' },
    seed: { type: 'string' },
  },
});
const COMMANDS = Number(values.commands);
const KILLS = Number(values.kills);
const MAX_WAIT_MS = Number(values['max-wait-ms']);

// A small seeded PRNG (mulberry32) so that a failing run can be replayed with --seed.
const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
let state = seed >>> 0;
function random(): number {
  state = (state + 0x6d2b79f5) >>> 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)] as T;

const out = (line: string): void => {
  process.stdout.write(`${line}\n`);
};

async function main(): Promise<number> {
  const t0 = Date.now();
  const release = await acquireE2eLock();
  const hostId = uniqueHostId('soak');
  let storage: E2eStorage | null = null;
  let vms: TestVms | null = null;
  let adapters: Adapters | null = null;
  let engine: Engine | null = null;
  let worker: WorkerProcess | null = null;
  const compiled = await compileWorker();
  try {
    storage = await E2eStorage.create(5);
    const s = storage;
    vms = await TestVms.open();
    const vm1 = await vms.create();
    const vm2 = await vms.create();
    adapters = await openAdapters(s);
    await setDrive(adapters, s, vm1.uuid, null);
    await setDrive(adapters, s, vm2.uuid, null);
    engine = await Engine.open(hostId);
    const shared = s.pdiv(4);
    const media = new Map<string, (Pdiv | null)[]>([
      [vm1.uuid, [s.pdiv(0), s.pdiv(1), shared, null]],
      [vm2.uuid, [s.pdiv(2), s.pdiv(3), shared, null]],
    ]);
    out(`seed ${seed}; host ${hostId}; VMs ${vm1.name} ${vm2.name}; ${COMMANDS} commands, ${KILLS} kills (wait 0..${MAX_WAIT_MS} ms after readiness)`);

    const commands: ChangeCdCommand[] = [];
    for (let i = 0; i < COMMANDS; i++) {
      const vm = pick([vm1, vm2]);
      commands.push(changeCd(vm.uuid, pick(media.get(vm.uuid) ?? [null]), randomUUID()));
    }
    const env = { hostId, storageRoot: s.root, entry: compiled.entry, domainFilter: onlyDomains(vm1.name, vm2.name), extraEnv: { CDROM_RETRY_LIMIT: '1000', CDROM_LOG_LEVEL: 'info' } };
    const logs: string[] = [];
    const startOne = async (): Promise<WorkerProcess> => startWorkerProcess(env, { readyTimeoutMs: 120_000 });

    worker = await startOne();
    for (const c of commands) await engine.send(c);
    const e = engine;
    const done = (): number => new Set(e.events.map((x) => x.commandId)).size;

    let kills = 0;
    let killedMidWork = 0;
    while (kills < KILLS) {
      await sleep(Math.floor(random() * MAX_WAIT_MS));
      const before = done();
      const busy = before < COMMANDS;
      await worker.kill();
      kills++;
      if (busy) killedMidWork++;
      logs.push(worker.logs());
      out(`kill ${kills}: ${before}/${COMMANDS} commands answered`);
      worker = await startOne();
    }
    await waitUntil(() => done() >= COMMANDS, 600_000, 'an event for every command', 200);
    const drained = Date.now();
    const exit = await worker.stop();
    logs.push(worker.logs());
    worker = null;

    // ---- checks -------------------------------------------------------------------
    const problems: string[] = [];
    if (exit.code !== 0) problems.push(`last worker exited with ${JSON.stringify(exit)}`);
    const byCommand = new Map<string, ResultEvent[]>();
    for (const ev of e.events) byCommand.set(ev.commandId ?? '', [...(byCommand.get(ev.commandId ?? '') ?? []), ev]);
    const outcomes = new Map<string, number>();
    let repeats = 0;
    for (const c of commands) {
      const evs = byCommand.get(c.commandId) ?? [];
      if (evs.length === 0) problems.push(`no event for ${c.commandId}`);
      repeats += Math.max(0, evs.length - 1);
      const first = evs[0];
      if (first === undefined) continue;
      const key = `${first.type.replace('changeCD.', '')}/${first.action ?? '-'}${first.error ? `/${first.error.code}` : ''}`;
      outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
      for (const again of evs.slice(1)) {
        for (const k of ['type', 'action', 'previous', 'current'] as const) {
          if (JSON.stringify(again[k]) !== JSON.stringify(first[k])) problems.push(`${c.commandId}: repeat differs in ${k}: ${JSON.stringify(first[k])} vs ${JSON.stringify(again[k])}`);
        }
      }
    }
    const used = new Set<string>();
    for (const vm of [vm1, vm2] as TestVm[]) {
      // The first event of each command is the real one (repeats answer from the journal);
      // the one that finished last says what the drive must hold.
      const firsts = commands
        .filter((c) => c.vmId === vm.uuid)
        .map((c) => byCommand.get(c.commandId)?.[0])
        .filter((x): x is ResultEvent => x !== undefined);
      firsts.sort((a, b) => Date.parse(a.finishedAt) - Date.parse(b.finishedAt));
      const last = firsts[firsts.length - 1];
      const want = (last?.current ?? null) as Pdiv | null;
      const snap = await observeDrive(vm.name, s);
      out(`${vm.name}: ${snap.summary}; last finished command ${last?.commandId ?? '-'} (${last?.type ?? '-'}/${last?.action ?? '-'})`);
      const wantSource = want === null ? null : s.linkPath(want);
      if (snap.source !== wantSource) problems.push(`${vm.name}: drive holds ${snap.source ?? 'nothing'}, last command left ${wantSource ?? 'nothing'}`);
      if (snap.entries.length !== 1 || snap.entries[0]?.state !== null || snap.change !== null) problems.push(`${vm.name}: metadata not settled: ${snap.summary}`);
      else if ((snap.entries[0]?.pdiv?.volumeID ?? null) !== (want?.volumeID ?? null)) {
        problems.push(`${vm.name}: metadata names ${snap.entries[0]?.pdiv?.volumeID ?? 'nothing'}, drive holds ${want?.volumeID ?? 'nothing'}`);
      }
      if (!snap.foreignKept) problems.push(`${vm.name}: foreign metadata content lost`);
      if (want !== null) used.add(want.volumeID);
    }
    const act = await s.activeVolumes();
    problems.push(...act.problems);
    const leaked = act.active.filter((v) => !used.has(v));
    const missing = [...used].filter((v) => !act.active.includes(v));
    if (leaked.length > 0) problems.push(`active but in no drive: ${leaked.join(', ')}`);
    if (missing.length > 0) problems.push(`in a drive but not active: ${missing.join(', ')}`);

    const rows = new Map<string, number>();
    for (const l of logs.join('\n').split('\n')) {
      if (!l.includes('"recovered drive"')) continue;
      const row = /"row":"([^"]+)"/.exec(l)?.[1] ?? '?';
      rows.set(row, (rows.get(row) ?? 0) + 1);
    }

    out('');
    out(`commands ${COMMANDS}, events ${e.events.length} (repeats ${repeats}), kills ${kills} (${killedMidWork} while commands were outstanding)`);
    out(`outcomes (first event per command): ${[...outcomes.entries()].sort().map(([k, n]) => `${k}=${n}`).join(', ')}`);
    out(`recovery at restarts: ${rows.size === 0 ? 'nothing to recover' : [...rows.entries()].map(([k, n]) => `${n}× ${k}`).join('; ')}`);
    out(`time: ${((drained - t0) / 1000).toFixed(1)} s to answer every command, ${((Date.now() - t0) / 1000).toFixed(1)} s in all`);
    if (problems.length > 0) {
      out(`FAILED: ${problems.length} problem(s)`);
      for (const p of problems.slice(0, 50)) out(`  ${p}`);
      return 1;
    }
    out('OK: every command answered, every drive holds what its last command left, metadata settled, no volume leaked');
    return 0;
  } finally {
    await worker?.kill();
    await engine?.close();
    await adapters?.hypervisor.close();
    await vms?.cleanup().catch((err: unknown) => out(`VM cleanup failed: ${String(err)}`));
    await storage?.remove().catch((err: unknown) => out(`storage cleanup failed: ${String(err)}`));
    await compiled.remove();
    await release();
  }
}

process.exitCode = await main().catch((err: unknown) => {
  out(`soak failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  return 1;
});
