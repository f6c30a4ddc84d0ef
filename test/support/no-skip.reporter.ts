import type { Reporter, TestModule } from 'vitest/node';
import { skipAllowed } from './real-stack.js';

/**
 * The catch-all behind real-stack.ts: under CI (and `npm test` without arguments) a run
 * in which any test was skipped fails, unless CDROM_ALLOW_SKIP=1 outside CI. A test
 * skipped by whatever condition someone adds later is a test that did not check anything.
 */
export default class NoSkipReporter implements Reporter {
  onTestRunEnd(testModules: ReadonlyArray<TestModule>): void {
    if (skipAllowed()) return;
    const skipped: string[] = [];
    for (const m of testModules) for (const t of m.children.allTests('skipped')) skipped.push(`${m.moduleId.replace(`${process.cwd()}/`, '')} > ${t.fullName}`);
    if (skipped.length === 0) return;
    process.stderr.write(`\n${skipped.length} test(s) skipped, which this run does not allow (CI, or npm test; CDROM_ALLOW_SKIP=1 outside CI allows it):\n${skipped.map((s) => `  - ${s}`).join('\n')}\n`);
    process.exitCode = 1;
  }
}
