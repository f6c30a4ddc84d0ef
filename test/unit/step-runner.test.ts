import type { AnyActorRef } from 'xstate';
import { describe, expect, it } from 'vitest';
import { CdromError } from '../../src/domain/errors.js';
import { Deadlines, StepRunner } from '../../src/machines/step-runner.js';

/** The two things the runner uses of an actor: its status and send. */
function fakeActor(): { ref: AnyActorRef; sent: unknown[]; stop: () => void } {
  const sent: unknown[] = [];
  let status = 'active';
  const ref = { send: (e: unknown) => sent.push(e), getSnapshot: () => ({ status }) } as unknown as AnyActorRef;
  return { ref, sent, stop: () => (status = 'stopped') };
}

const later = <T>(ms: number, v: T): Promise<T> => new Promise((r) => setTimeout(() => r(v), ms));
const tick = (ms = 0): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('StepRunner', () => {
  it('sends the output as <doneType>, once', async () => {
    const a = fakeActor();
    new StepRunner(new Deadlines(1_000)).run(a.ref, 'prepareVolume.done', 'preparing', () => Promise.resolve(42));
    await tick();
    expect(a.sent).toEqual([{ type: 'prepareVolume.done', output: 42 }]);
  });

  it('sends a rejection, or a synchronous throw, as step.error', async () => {
    const a = fakeActor();
    const steps = new StepRunner(new Deadlines(1_000));
    const err = new CdromError('PREPARE_FAILED', 'no');
    steps.run(a.ref, 'x.done', 'x', () => Promise.reject(err));
    await tick();
    steps.run(a.ref, 'x.done', 'x', () => {
      throw new Error('sync');
    });
    await tick();
    expect(a.sent[0]).toEqual({ type: 'step.error', error: err });
    expect(a.sent[1]).toMatchObject({ type: 'step.error', error: { code: 'INTERNAL', message: 'sync' } });
    expect(a.sent).toHaveLength(2);
  });

  it('a step past its deadline fails with a retryable TIMEOUT; its late outcome is dropped', async () => {
    const a = fakeActor();
    const deadlines = new Deadlines(30);
    new StepRunner(deadlines).run(a.ref, 'x.done', 'tearing down', () => later(200, 'late'));
    await tick(120);
    expect(a.sent).toHaveLength(1);
    expect(a.sent[0]).toMatchObject({ type: 'step.error', error: { code: 'TIMEOUT', retryable: true, message: 'tearing down took longer than 30 ms' } });
    await tick(150);
    expect(a.sent).toHaveLength(1);
    expect(deadlines.size).toBe(0);
  });

  it('drops the outcome of a step its actor has moved on from, and anything for a stopped actor', async () => {
    const a = fakeActor();
    const steps = new StepRunner(new Deadlines(1_000));
    steps.run(a.ref, 'old.done', 'old', () => later(30, 'old'));
    steps.run(a.ref, 'new.done', 'new', () => Promise.resolve('new'));
    await tick(60);
    expect(a.sent).toEqual([{ type: 'new.done', output: 'new' }]);
    const b = fakeActor();
    steps.run(b.ref, 'x.done', 'x', () => later(10, 1));
    b.stop();
    await tick(30);
    expect(b.sent).toEqual([]);
  });

  it('keeps no timer once nothing is pending', async () => {
    const deadlines = new Deadlines(1_000);
    const a = fakeActor();
    new StepRunner(deadlines).run(a.ref, 'x.done', 'x', () => later(5, 1));
    expect(deadlines.size).toBe(1);
    await tick(20);
    expect(deadlines.size).toBe(0);
  });
});
