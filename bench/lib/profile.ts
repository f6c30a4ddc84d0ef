import { readdir, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';

/** The top self-time entries of the `.cpuprofile` files `node --cpu-prof` wrote. */

interface ProfileNode {
  readonly id: number;
  readonly callFrame: { readonly functionName: string; readonly url: string; readonly lineNumber: number };
}

interface CpuProfile {
  readonly nodes: readonly ProfileNode[];
  readonly samples: readonly number[];
  readonly timeDeltas: readonly number[];
}

export interface ProfileEntry {
  readonly fn: string;
  readonly where: string;
  readonly selfMs: number;
  readonly selfPct: number;
}

function where(url: string, line: number): string {
  if (url === '') return '(native)';
  const path = url.replace(/^file:\/\//, '');
  const nm = path.lastIndexOf('node_modules/');
  const short = nm >= 0 ? path.slice(nm + 'node_modules/'.length) : path.includes('/work/') ? path.replace(/^.*?\/(src|bench|test)\//, '$1/') : basename(path);
  return `${short}:${line + 1}`;
}

/** Self time per function over every profile in `dir`, busiest first; idle and GC kept apart. */
export async function topEntries(dir: string, n = 15): Promise<{ totalMs: number; idleMs: number; entries: ProfileEntry[] }> {
  const self = new Map<string, { fn: string; where: string; us: number }>();
  let total = 0;
  let idle = 0;
  for (const f of (await readdir(dir)).filter((x) => x.endsWith('.cpuprofile'))) {
    const p = JSON.parse(await readFile(join(dir, f), 'utf8')) as CpuProfile;
    const byId = new Map(p.nodes.map((node) => [node.id, node]));
    for (let i = 0; i < p.samples.length; i++) {
      const node = byId.get(p.samples[i] as number);
      const dt = p.timeDeltas[i] ?? 0;
      if (node === undefined) continue;
      total += dt;
      const name = node.callFrame.functionName || '(anonymous)';
      if (name === '(idle)') {
        idle += dt;
        continue;
      }
      const key = `${name}|${node.callFrame.url}|${node.callFrame.lineNumber}`;
      const e = self.get(key) ?? { fn: name, where: where(node.callFrame.url, node.callFrame.lineNumber), us: 0 };
      e.us += dt;
      self.set(key, e);
    }
  }
  const busy = total - idle;
  const entries = [...self.values()]
    .sort((a, b) => b.us - a.us)
    .slice(0, n)
    .map((e) => ({ fn: e.fn, where: e.where, selfMs: Math.round(e.us / 100) / 10, selfPct: busy > 0 ? Math.round((1000 * e.us) / busy) / 10 : 0 }));
  return { totalMs: Math.round(total / 1000), idleMs: Math.round(idle / 1000), entries };
}
