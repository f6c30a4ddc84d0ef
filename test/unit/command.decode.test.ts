import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { decodeCommand, MAX_COMMAND_BYTES } from '../../src/contracts/command.decode.js';

const pdiv = () => ({ poolID: randomUUID(), domainID: randomUUID(), imageID: randomUUID(), volumeID: randomUUID() });
const valid = (over: Record<string, unknown> = {}) => ({ type: 'changeCD', version: 1, commandId: randomUUID(), vmId: randomUUID(), drive: 'sdc', media: pdiv(), ...over });
const decode = (v: unknown) => decodeCommand(Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)));

function rejection(v: unknown) {
  const r = decode(v);
  if (r.ok) throw new Error(`expected a rejection for ${JSON.stringify(v).slice(0, 200)}`);
  return r.rejection;
}

describe('decodeCommand', () => {
  it('accepts PDIV, eject and legacy path commands', () => {
    expect(decode(valid()).ok).toBe(true);
    expect(decode(valid({ media: null })).ok).toBe(true);
    expect(decode(valid({ media: { path: '/rhev/data-center/mnt/iso/x.iso' } })).ok).toBe(true);
  });

  it('rejects a body that is not JSON, or not an object', () => {
    expect(rejection('{not json')).toMatchObject({ code: 'INVALID_COMMAND', field: '', message: expect.stringMatching(/not JSON/) as unknown });
    expect(rejection('[1,2]').message).toMatch(/not a JSON object/);
    expect(rejection('"changeCD"').message).toMatch(/not a JSON object/);
    expect(rejection('null').message).toMatch(/not a JSON object/);
  });

  it('rejects wrong types', () => {
    expect(rejection(valid({ version: '1' })).field).toBe('/version');
    expect(rejection(valid({ drive: 3 })).field).toBe('/drive');
    expect(rejection(valid({ type: 'ejectCD' })).field).toBe('/type');
    expect(rejection(valid({ media: 'sdc.iso' })).field).toBe('/media');
    expect(rejection(valid({ media: { path: 42 } })).field).toBe('/media/path');
  });

  it('rejects unknown and missing fields, naming them', () => {
    expect(rejection({ ...valid(), extra: 1 })).toMatchObject({ field: '/extra', message: expect.stringMatching(/unknown field 'extra'/) as unknown });
    expect(rejection(valid({ media: { ...pdiv(), size: 1 } })).field).toBe('/media/size');
    expect(rejection(valid({ media: { path: '/a.iso', poolID: randomUUID() } })).field).toBe('/media/poolID');
    const { drive: _drive, ...noDrive } = valid();
    expect(rejection(noDrive).field).toBe('/drive');
  });

  it('rejects non-UUID ids, and names only the valid ids it could read', () => {
    const commandId = randomUUID();
    const r = rejection(valid({ commandId, vmId: 'not-a-uuid' }));
    expect(r.field).toBe('/vmId');
    expect(r.ids).toEqual({ commandId, vmId: null, drive: 'sdc' });
    expect(rejection(valid({ commandId: 'x' })).field).toBe('/commandId');
    expect(rejection(valid({ media: { ...pdiv(), volumeID: 'v' } })).field).toBe('/media/volumeID');
  });

  it('rejects relative and escaping paths', () => {
    expect(rejection(valid({ media: { path: 'iso/x.iso' } })).field).toBe('/media/path');
    expect(rejection(valid({ media: { path: '/rhev/data-center/mnt/../../etc/shadow' } })).message).toMatch(/'\.\.'/);
    expect(rejection(valid({ media: { path: '/rhev/./x.iso' } })).field).toBe('/media/path');
    expect(rejection(valid({ media: { path: '/x\u0000.iso' } })).field).toBe('/media/path');
  });

  it('rejects a body larger than 64 KiB before parsing it', () => {
    const big = JSON.stringify({ ...valid(), pad: 'x'.repeat(70 * 1024) });
    expect(Buffer.byteLength(big)).toBeGreaterThan(MAX_COMMAND_BYTES);
    expect(rejection(big).message).toMatch(/larger than 65536/);
  });

  it('never throws, whatever the bytes', () => {
    for (const b of [Buffer.alloc(0), Buffer.from([0xff, 0xfe, 0x00]), Buffer.from('{"__proto__":{"x":1}}')]) {
      expect(() => decodeCommand(b)).not.toThrow();
      expect(decodeCommand(b).ok).toBe(false);
    }
  });
});
