import { TypeCompiler } from '@sinclair/typebox/compiler';
import { ChangeCdCommandSchema, type ChangeCdCommand } from './schemas.js';
import { UUID_RE, DRIVE_RE } from '../domain/media.js';

export const MAX_COMMAND_BYTES = 64 * 1024;

const checker = TypeCompiler.Compile(ChangeCdCommandSchema);

/** Whatever ids a rejected message carried that are valid: a rejected event names them. */
export interface ReadableIds {
  readonly commandId: string | null;
  readonly vmId: string | null;
  readonly drive: string | null;
}

export interface Rejection {
  /** INVALID_COMMAND: the body; UNAUTHORIZED_SENDER: who sent it (src/consumers/sender.ts) */
  readonly code: 'INVALID_COMMAND' | 'UNAUTHORIZED_SENDER';
  /** JSON pointer of the offending field ('' for the whole body) */
  readonly field: string;
  readonly message: string;
  readonly ids: ReadableIds;
}

export type DecodeResult = { readonly ok: true; readonly command: ChangeCdCommand } | { readonly ok: false; readonly rejection: Rejection };

const NO_IDS: ReadableIds = { commandId: null, vmId: null, drive: null };

function reject(field: string, message: string, ids: ReadableIds = NO_IDS): DecodeResult {
  return { ok: false, rejection: { code: 'INVALID_COMMAND', field, message, ids } };
}

function readIds(value: unknown): ReadableIds {
  if (typeof value !== 'object' || value === null) return NO_IDS;
  const v = value as Record<string, unknown>;
  const uuid = (x: unknown): string | null => (typeof x === 'string' && UUID_RE.test(x) ? x : null);
  return {
    commandId: uuid(v['commandId']),
    vmId: uuid(v['vmId']),
    drive: typeof v['drive'] === 'string' && DRIVE_RE.test(v['drive']) ? v['drive'] : null,
  };
}

/**
 * The valid ids of a body, deciding nothing else about it: for a command rejected before
 * its body is decoded (UNAUTHORIZED_SENDER), named as decodeCommand would name them.
 */
export function readableIds(body: Buffer): ReadableIds {
  if (body.length > MAX_COMMAND_BYTES) return NO_IDS;
  try {
    return readIds(JSON.parse(body.toString('utf8')));
  } catch {
    return NO_IDS;
  }
}

/**
 * A raw message body → a typed command, or a rejection whose message names the field.
 * Never throws.
 */
export function decodeCommand(body: Buffer | string): DecodeResult {
  const size = typeof body === 'string' ? Buffer.byteLength(body) : body.length;
  if (size > MAX_COMMAND_BYTES) return reject('', `body is ${size} bytes, larger than ${MAX_COMMAND_BYTES}`);
  let value: unknown;
  try {
    value = JSON.parse(typeof body === 'string' ? body : body.toString('utf8'));
  } catch (err) {
    return reject('', `body is not JSON: ${(err as Error).message}`);
  }
  const ids = readIds(value);
  if (typeof value !== 'object' || value === null || Array.isArray(value)) return reject('', 'body is not a JSON object', ids);
  if (!checker.Check(value)) {
    const first = mostSpecificError(value);
    return reject(first.field, first.message, ids);
  }
  if (value.media !== null && 'path' in value.media) {
    const path = value.media.path;
    if (path.split('/').some((seg) => seg === '..' || seg === '.')) {
      return reject('/media/path', `path ${JSON.stringify(path)} contains '.' or '..' segments`, ids);
    }
    if (path.includes('\0')) return reject('/media/path', 'path contains a NUL byte', ids);
  }
  return { ok: true, command: value };
}

/**
 * TypeBox reports a union failure at the union's path; look one level deeper so the
 * message names e.g. `/media/volumeID` rather than just `/media`.
 */
function mostSpecificError(value: object): { field: string; message: string } {
  const v = value as Record<string, unknown>;
  for (const key of Object.keys(v)) {
    if (!(key in ChangeCdCommandSchema.properties)) {
      return { field: `/${key}`, message: `unknown field '${key}'` };
    }
  }
  for (const key of Object.keys(ChangeCdCommandSchema.properties)) {
    if (!(key in v)) return { field: `/${key}`, message: `missing field '${key}'` };
  }
  const media = v['media'];
  if (media !== null && typeof media === 'object' && !Array.isArray(media)) {
    const m = media as Record<string, unknown>;
    const keys = Object.keys(m);
    if ('path' in m) {
      const extra = keys.filter((k) => k !== 'path');
      if (extra.length > 0) return { field: `/media/${extra[0]}`, message: `unknown field 'media.${extra[0]}' beside 'path'` };
      if (typeof m['path'] !== 'string') return { field: '/media/path', message: 'media.path must be a string' };
      if (!m['path'].startsWith('/')) return { field: '/media/path', message: 'media.path must be absolute' };
    } else {
      for (const k of keys) {
        if (!['poolID', 'domainID', 'imageID', 'volumeID'].includes(k)) {
          return { field: `/media/${k}`, message: `unknown field 'media.${k}'` };
        }
      }
      for (const k of ['poolID', 'domainID', 'imageID', 'volumeID']) {
        if (typeof m[k] !== 'string' || !UUID_RE.test(m[k])) {
          return { field: `/media/${k}`, message: `media.${k} must be a UUID` };
        }
      }
    }
  } else if (media !== null && media !== undefined) {
    return { field: '/media', message: 'media must be a PDIV object, {path} or null' };
  }
  const first = checker.Errors(value).First();
  if (first === undefined) return { field: '', message: 'invalid command' };
  const name = first.path.replace(/^\//, '').replace(/\//g, '.');
  return { field: first.path, message: `${name || 'body'}: ${first.message}` };
}
