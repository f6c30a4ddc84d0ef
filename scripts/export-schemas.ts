// Writes the wire contract's JSON Schemas to schemas/ (npm run schemas).
import { writeFileSync } from 'node:fs';
import { jsonSchemaFiles } from '../src/contracts/json-schemas.js';

for (const [name, text] of Object.entries(jsonSchemaFiles())) {
  writeFileSync(new URL(`../schemas/${name}`, import.meta.url), text);
  console.log(`wrote schemas/${name}`);
}
