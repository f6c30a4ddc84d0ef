import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DIAGRAM_PATH, renderMachineDoc, renderMermaid } from '../../scripts/diagram.js';

describe('docs/cdrom-machine.md', () => {
  it('is what `npm run diagram` renders from the machine now (run it when this fails)', () => {
    expect(readFileSync(DIAGRAM_PATH, 'utf8')).toBe(renderMachineDoc());
  });

  it('shows every flow and the idempotency shortcuts', () => {
    const m = renderMermaid();
    for (const edge of ['idle --> inspecting : EXECUTE', 'journaling --> loading', 'journaling --> ejecting', 'journaling --> changing', 'inspecting --> settled : done [1]', 'retrying --> idle : always']) {
      expect(m).toContain(edge);
    }
    expect(m).toMatch(/changing_teardownOld : teardownOld · teardownVolume\(old, teardown\)/);
    expect(m).toContain('loading_update --> loading_teardownNew : error [else]');
  });
});
