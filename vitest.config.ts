import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 120_000,
    pool: 'forks',
    // Files run one after another: integration and e2e tests share this host's libvirtd,
    // loop devices and broker, and on a 2-core machine parallel files only fight for it.
    fileParallelism: false,
    reporters: ['default'],
  },
});
