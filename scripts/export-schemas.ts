// Writes the wire contract's JSON Schemas and its AsyncAPI document to schemas/ (npm run schemas).
import { writeFileSync } from 'node:fs';
import { asyncApiYaml } from '../src/contracts/asyncapi.js';
import { jsonSchemaFiles } from '../src/contracts/json-schemas.js';

const files: Record<string, string> = { ...jsonSchemaFiles(), 'asyncapi.yaml': asyncApiYaml() };
for (const [name, text] of Object.entries(files)) {
  writeFileSync(new URL(`../schemas/${name}`, import.meta.url), text);
  console.log(`wrote schemas/${name}`);
}
