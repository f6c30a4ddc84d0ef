import { defineConfig } from 'vitest/config';
import { inCi } from './test/support/real-stack.js';

// Under CI, and under `npm test` (scripts/test.sh sets CDROM_NO_SKIP), a skipped test fails the run.
const noSkip = inCi() || process.env.CDROM_NO_SKIP === '1';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Files run one after another: integration and e2e tests share this host's libvirtd,
    // loop devices and broker, and on a 2-core machine parallel files only fight for it.
    fileParallelism: false,
    // A forgotten `.only` would silently run one test instead of all: it fails the run
    // (locally too; `--allowOnly` on the command line to focus on purpose).
    allowOnly: false,
    reporters: noSkip ? ['default', './test/support/no-skip.reporter.ts'] : ['default'],
  },
});
