import { argInt, runSection } from './lib/common.js';
import { throughput } from './throughput.bench.js';

/** Item 2 as a bench/run.ts section: the lead's throughput bench, median of `rounds`. */
const argv = process.argv.slice(2);
await runSection('throughput', () =>
  throughput({ total: argInt(argv, 'total', 20_000), drives: argInt(argv, 'drives', 1000), concurrency: argInt(argv, 'concurrency', 16), rounds: argInt(argv, 'rounds', 3), tracing: argInt(argv, 'tracing', 0) === 1 }),
);
