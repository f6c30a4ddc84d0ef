import { readFileSync } from 'node:fs';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { describe, expect, it } from 'vitest';
import { jsonSchemaFiles } from '../../src/contracts/json-schemas.js';
import { ResultEventSchema } from '../../src/contracts/schemas.js';

describe('wire contract', () => {
  it.each(Object.entries(jsonSchemaFiles()))('schemas/%s is up to date (npm run schemas)', (name, text) => {
    expect(readFileSync(new URL(`../../schemas/${name}`, import.meta.url), 'utf8')).toBe(text);
  });

  it('the result event schema accepts the contract\'s example and refuses unknown fields', () => {
    const check = TypeCompiler.Compile(ResultEventSchema);
    const event = {
      type: 'changeCD.completed',
      version: 1,
      commandId: '5c3e1c0e-6f43-4a43-9d0e-3b8a7b0f2a11',
      hostId: 'host-1',
      vmId: 'a2b6f4f0-0c7e-4f0e-8d52-1d0d7a3f5e90',
      drive: 'sdc',
      action: 'load',
      previous: null,
      current: { poolID: '13345997-b94f-42dd-b8ef-a1392f65cebf', domainID: '88252cf6-381e-48f0-8795-a294a32c7149', imageID: '89f05c7d-b961-4935-993f-514499024515', volumeID: '626a493f-5214-4337-b580-96a1ce702c2a' },
      warnings: [],
      error: null,
      startedAt: '2026-11-28T14:00:00.000Z',
      finishedAt: '2026-11-28T14:00:00.120Z',
      durationMs: 120,
    };
    expect(check.Check(event)).toBe(true);
    expect(check.Check({ ...event, extra: 1 })).toBe(false);
  });
});
