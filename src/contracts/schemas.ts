import { FormatRegistry, Type, type Static } from '@sinclair/typebox';
import { ERROR_CODES } from '../domain/errors.js';

/**
 * The wire contract v1 (CONTRACT.md sections 3 and 4) as JSON Schema with static types.
 * `npm run schemas` writes these to schemas/*.json; a test fails when those are stale.
 */

if (!FormatRegistry.Has('date-time')) {
  FormatRegistry.Set('date-time', (v) => /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/.test(v) && !Number.isNaN(Date.parse(v)));
}

const UUID_PATTERN = '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$';

export const Uuid = Type.String({ pattern: UUID_PATTERN, description: 'a UUID' });

export const PdivSchema = Type.Object(
  { poolID: Uuid, domainID: Uuid, imageID: Uuid, volumeID: Uuid },
  { additionalProperties: false, $id: 'Pdiv', description: 'an ISO volume by pool, domain, image and volume id' },
);

export const LegacyPathSchema = Type.Object(
  {
    path: Type.String({
      minLength: 2,
      maxLength: 4096,
      pattern: '^/',
      description: 'absolute path of an ISO on a legacy ISO domain, inside CDROM_ISO_DIRS',
    }),
  },
  { additionalProperties: false, $id: 'LegacyPath' },
);

export const MediaSchema = Type.Union([PdivSchema, LegacyPathSchema, Type.Null()], {
  description: 'PDIV: load this ISO volume; null: eject; {path}: legacy ISO domain',
});

export const ChangeCdCommandSchema = Type.Object(
  {
    type: Type.Literal('changeCD'),
    version: Type.Literal(1),
    commandId: Uuid,
    vmId: Uuid,
    drive: Type.String({ pattern: '^[a-z]{2,3}[a-z0-9]{0,8}$', description: "the CD-ROM's target dev, e.g. sdc" }),
    media: MediaSchema,
  },
  {
    additionalProperties: false,
    $id: 'https://ovirt.org/schemas/cdrom-worker/changeCD.command.v1.json',
    title: 'changeCD command v1',
  },
);

export const ErrorCodeSchema = Type.Union(ERROR_CODES.map((c) => Type.Literal(c)));

export const ErrorInfoSchema = Type.Object(
  { code: ErrorCodeSchema, message: Type.String(), retryable: Type.Boolean() },
  { additionalProperties: false },
);

export const WarningSchema = Type.Object({ code: Type.String(), message: Type.String() }, { additionalProperties: false });

export const ResultEventSchema = Type.Object(
  {
    type: Type.Union([Type.Literal('changeCD.completed'), Type.Literal('changeCD.failed'), Type.Literal('changeCD.rejected')]),
    version: Type.Literal(1),
    commandId: Type.Union([Uuid, Type.Null()]),
    hostId: Type.String({ pattern: '^[A-Za-z0-9_-]{1,64}$' }),
    vmId: Type.Union([Uuid, Type.Null()]),
    drive: Type.Union([Type.String(), Type.Null()]),
    action: Type.Union([Type.Literal('load'), Type.Literal('eject'), Type.Literal('change'), Type.Literal('none')]),
    previous: MediaSchema,
    current: MediaSchema,
    warnings: Type.Array(WarningSchema),
    error: Type.Union([ErrorInfoSchema, Type.Null()]),
    startedAt: Type.String({ format: 'date-time' }),
    finishedAt: Type.String({ format: 'date-time' }),
    durationMs: Type.Integer({ minimum: 0 }),
  },
  {
    additionalProperties: false,
    $id: 'https://ovirt.org/schemas/cdrom-worker/changeCD.event.v1.json',
    title: 'changeCD result event v1',
  },
);

export type ChangeCdCommand = Static<typeof ChangeCdCommandSchema>;
export type ResultEvent = Static<typeof ResultEventSchema>;
