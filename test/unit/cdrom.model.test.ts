import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isPdiv, sameMedia, type Media } from '../../src/domain/media.js';
import { OVIRT_VM_NS } from '../../src/domain/ports.js';
import { sourceHolds } from '../../src/domain/recovery.js';
import { ISO_A, ISO_B, makeWorld, resultOf, type World } from '../support/world.js';

/**
 * Model-based: random command sequences with a failure injected at any step, checking
 * the design page's promises after every command.
 */

type Failure = 'none' | 'updateDevice' | 'prepare' | 'teardown' | 'hold-old' | 'metadata-0' | 'metadata-1' | 'metadata-2' | 'journal';
const MEDIA: (Media | null)[] = [ISO_A, ISO_B, null, { path: '/iso/legacy.iso' }];

function inject(w: World, f: Failure, holding: Media | null): void {
  switch (f) {
    case 'none':
      return;
    case 'updateDevice':
      return w.hv.failNext('updateDevice');
    case 'prepare':
      return w.storage.failNext('prepare');
    case 'teardown':
      return w.storage.failNext('teardown');
    case 'hold-old':
      if (isPdiv(holding)) w.storage.hold(holding);
      return;
    case 'journal':
      return w.hv.failNext('setMetadata', { ns: 'http://ovirt.org/cdrom-worker/1.0', skip: 1 });
    default:
      return w.hv.failNext('setMetadata', { ns: OVIRT_VM_NS.uri, skip: Number(f.slice(-1)) });
  }
}

function clearInjections(w: World): void {
  // consume leftovers so they do not leak into the next command
  for (const p of [ISO_A, ISO_B]) w.storage.release(p);
  w.hv.clearFailures();
  w.storage.clearFailures();
}

const held = (w: World): Media | null => {
  const s = w.source();
  if (s === null) return null;
  return [ISO_A, ISO_B].find((p) => sourceHolds({ type: 'block', path: s.path }, p)) ?? { path: s.path };
};

describe('the CD-ROM machine under random commands and failures', () => {
  it('keeps the drive, the metadata, the volumes and the outcome consistent', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ media: fc.constantFrom(...MEDIA), failure: fc.constantFrom<Failure>('none', 'none', 'updateDevice', 'prepare', 'teardown', 'hold-old', 'metadata-0', 'metadata-1', 'metadata-2', 'journal') }), { minLength: 1, maxLength: 12 }),
        async (steps) => {
          const w = makeWorld();
          const leaked = new Set<string>();
          for (const { media, failure } of steps) {
            const before = held(w);
            inject(w, failure, before);
            const r = resultOf(await w.run(media));
            clearInjections(w);
            const now = held(w);

            // the drive holds the old or the new media, empty only after an eject
            expect(sameMedia(now, before) || sameMedia(now, media)).toBe(true);
            if (now === null && before !== null) expect(media).toBeNull();
            // the outcome says what the drive holds
            expect(sameMedia(r.current, now)).toBe(true);
            if (r.outcome === 'completed') expect(sameMedia(now, media)).toBe(true);
            else expect(r.error).not.toBeNull();

            // no state left once the flow ended (after recovery, where a metadata write was made to fail)
            if (failure.startsWith('metadata') || failure === 'journal') await w.registry.recover(w.vmId, 'sdc');
            const md = w.drive();
            expect(md.entries.every((e) => e.state === null)).toBe(true);
            // the metadata describes what the drive holds
            const named = md.entries.filter((e) => e.pdiv !== null);
            if (isPdiv(now)) expect(named.map((e) => e.pdiv?.volumeID)).toEqual([now.volumeID]);
            else expect(named).toEqual([]);

            // no volume is active that no drive references, but for logged teardown failures and in-use volumes
            for (const x of [...r.warnings, ...(r.error ? [r.error] : [])]) {
              if (x.code === 'TEARDOWN_FAILED' || x.code === 'VOLUME_IN_USE') for (const p of [ISO_A, ISO_B]) leaked.add(p.volumeID);
            }
            const expected = new Set(isPdiv(now) ? [now.volumeID] : []);
            for (const v of w.active()) expect(expected.has(v) || leaked.has(v)).toBe(true);
            for (const v of expected) expect(w.active()).toContain(v);
          }
        },
      ),
      { numRuns: 150 },
    );
  });
});
