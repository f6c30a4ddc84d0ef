import { ChangeCdCommandSchema, ResultEventSchema } from './schemas.js';

/** The checked-in JSON Schema files (schemas/), by file name, as other teams consume them. */
export function jsonSchemaFiles(): Record<string, string> {
  const render = (schema: object) => `${JSON.stringify({ $schema: 'https://json-schema.org/draft/2020-12/schema', ...schema }, null, 2)}\n`;
  return {
    'changeCD.command.v1.json': render(ChangeCdCommandSchema),
    'changeCD.event.v1.json': render(ResultEventSchema),
  };
}
