import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LibvirtProxy, runNode } from '../support/native.js';
import { TestVms, type TestVm } from '../support/vm.js';

/**
 * Finalizers never do libvirt RPCs on the JS thread. After `close()`, domain handles
 * still hold the connection; the last one's release is the connection's close RPC. It
 * used to run in the Domain's GC finalizer, on the JS thread: with libvirtd not
 * answering, JS stood still until it did. Here libvirtd is reached through a socat proxy
 * of this test's own, stopped with SIGSTOP — nothing shared is touched — and a child
 * process measures how long its event loop stalls while the Domain is collected.
 */

const STOP_MS = 3_000;

describe('native addon: finalizers', () => {
  let vms: TestVms;
  let vm: TestVm;

  beforeAll(async () => {
    vms = await TestVms.open();
    vm = await vms.create({ persistent: false });
  });
  afterAll(async () => {
    await vms?.cleanup();
  });

  it("hands the last domain release (the connection's close RPC) to the executor, not the JS thread", async () => {
    const proxy = await LibvirtProxy.start();
    let resume: NodeJS.Timeout | undefined;
    try {
      const script = `
        const virt = require(ADDON);
        (async () => {
          const conn = await virt.open(process.env.URI, () => {}, 0, 0);
          let dom = await conn.lookupByName(process.env.VM);
          await conn.close();   // the domain still holds the connection: no close RPC yet
          process.stdout.write('ready\\n');
          await new Promise((r) => process.stdin.once('data', r));   // the proxy is stopped now
          dom = null;
          const gaps = [];
          let last = Date.now();
          const tick = setInterval(() => { const now = Date.now(); gaps.push(now - last); last = now; }, 20);
          for (let i = 0; i < 5; i++) { globalThis.gc(); await new Promise((r) => setImmediate(r)); }
          await new Promise((r) => setTimeout(r, 1500));
          clearInterval(tick);
          process.stdout.write(JSON.stringify({ maxGapMs: Math.max(...gaps), domains: virt.debugCounts ? virt.debugCounts().domains : null }) + '\\n');
          process.exit(0);
        })().catch((e) => { console.error(e); process.exit(3); });
      `;
      const run = await runNode(script, {
        nodeArgs: ['--expose-gc'],
        env: { URI: proxy.uri, VM: vm.name },
        timeoutMs: 30_000,
        onLine: (line, child) => {
          if (line !== 'ready') return;
          proxy.stop();
          resume = setTimeout(() => proxy.cont(), STOP_MS);
          child.stdin?.write('go\n');
        },
      });
      expect(run.stderr).toBe('');
      expect(run.code).toBe(0);
      const result = JSON.parse(run.stdout.trim().split('\n').pop() ?? '{}') as { maxGapMs: number; domains: number | null };
      // JS kept running while the Domain's release waited on libvirtd, and it was collected.
      process.stdout.write(`native.finalizer: longest event-loop gap ${result.maxGapMs} ms with libvirtd unreachable for ${STOP_MS} ms\n`);
      expect(result.maxGapMs).toBeLessThan(500);
      expect(result.domains).toBe(0);
    } finally {
      clearTimeout(resume);
      await proxy.close();
    }
  });
});
