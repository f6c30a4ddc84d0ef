import { createActor, fromPromise, setup, type AnyStateMachine } from 'xstate';
import { Deadlines, StepRunner } from '../src/machines/step-runner.js';
import { argInt, median, round } from './lib/common.js';

/**
 * Why the CD-ROM machine starts its steps from entry actions (src/machines/step-runner.ts)
 * instead of invoking them: the same nine-step flow, each step an already-resolved
 * activity, run N times on one actor — (a) every step an invoked `fromPromise` child with
 * an `after` timeout, as the machine was written first; (b) every step started by an entry
 * action through the StepRunner, its outcome sent back as an event. Prints µs of wall
 * time per command (one core, nothing else running in the process).
 *
 *   npx tsx bench/steps.bench.ts [--commands 20000] [--rounds 5]
 */

const argv = process.argv.slice(2);
const N = argInt(argv, 'commands', 20_000);
const ROUNDS = argInt(argv, 'rounds', 5);
const STEPS = 9;

interface Ctx {
  n: number;
}
type Ev = { type: 'GO' } | { type: 'step.done'; output: number } | { type: 'step.error'; error: unknown };
const work = (n: number): Promise<number> => Promise.resolve(n + 1);

function invoked(): AnyStateMachine {
  const states: Record<string, object> = { idle: { on: { GO: 's0' } } };
  for (let i = 0; i < STEPS; i++) {
    states[`s${i}`] = {
      invoke: { src: 'step', input: ({ context }: { context: Ctx }) => context.n, onDone: { target: i === STEPS - 1 ? 'idle' : `s${i + 1}`, actions: 'keep' }, onError: 'idle' },
      after: { 60_000: 'idle' },
    };
  }
  return setup({
    types: { context: {} as Ctx, events: {} as Ev },
    actors: { step: fromPromise<number, number>(({ input }) => work(input)) },
    actions: { keep: ({ context, event }) => void (context.n = (event as unknown as { output: number }).output) },
  }).createMachine({ context: { n: 0 }, initial: 'idle', states } as never) as unknown as AnyStateMachine;
}

function entryStarted(): AnyStateMachine {
  const steps = new StepRunner(new Deadlines(60_000));
  const states: Record<string, object> = { idle: { on: { GO: 's0' } } };
  for (let i = 0; i < STEPS; i++) states[`s${i}`] = { entry: 'step', on: { 'step.done': { target: i === STEPS - 1 ? 'idle' : `s${i + 1}`, actions: 'keep' }, 'step.error': 'idle' } };
  return setup({
    types: { context: {} as Ctx, events: {} as Ev },
    actions: {
      step: ({ context, self }) => steps.run(self, 'step.done', 'step', () => work(context.n)),
      keep: ({ context, event }) => void (context.n = (event as { output: number }).output),
    },
  }).createMachine({ context: { n: 0 }, initial: 'idle', states } as never) as unknown as AnyStateMachine;
}

async function perCommandUs(machine: AnyStateMachine): Promise<number> {
  const actor = createActor(machine);
  let wake: (() => void) | null = null;
  actor.subscribe((s) => {
    if (s.matches('idle') && wake !== null) {
      const w = wake;
      wake = null;
      w();
    }
  });
  actor.start();
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    await new Promise<void>((resolve) => {
      wake = resolve;
      actor.send({ type: 'GO' });
    });
  }
  const us = ((performance.now() - t0) * 1000) / N;
  actor.stop();
  return us;
}

const a: number[] = [];
const b: number[] = [];
for (let r = 0; r < ROUNDS; r++) {
  a.push(await perCommandUs(invoked()));
  b.push(await perCommandUs(entryStarted()));
}
console.log(`${STEPS}-step command, median of ${ROUNDS} rounds × ${N}:`);
console.log(`  invoked fromPromise + after per state: ${round(median(a), 1)} µs`);
console.log(`  entry action + StepRunner:             ${round(median(b), 1)} µs`);
