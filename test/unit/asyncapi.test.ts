import { readFileSync } from 'node:fs';
import { DiagnosticSeverity, Parser } from '@asyncapi/parser';
import { describe, expect, it } from 'vitest';
import { asyncApiYaml } from '../../src/contracts/asyncapi.js';
import { ResultEventSchema } from '../../src/contracts/schemas.js';

/** schemas/asyncapi.yaml: the contract as AsyncAPI 3.0, generated from the TypeBox schemas. */

const committed = readFileSync(new URL('../../schemas/asyncapi.yaml', import.meta.url), 'utf8');

describe('AsyncAPI document', () => {
  it('schemas/asyncapi.yaml is up to date (npm run schemas)', () => {
    expect(committed, 'schemas/asyncapi.yaml is stale: run npm run schemas').toBe(asyncApiYaml());
  });

  it('parses as AsyncAPI with no error diagnostics', async () => {
    const { document, diagnostics } = await new Parser().parse(committed);
    // Errors only: warnings and hints (e.g. "AsyncAPI 3.1.0 exists") are advice.
    expect(diagnostics.filter((d) => DiagnosticSeverity[d.severity] === 'Error')).toEqual([]);
    expect(document).toBeDefined();
    const doc = document!;
    expect(doc.channels().all().map((c) => c.address())).toEqual(['cdrom.commands.{hostId}', '{hostId}.changeCD.{outcome}', 'cdrom.dead.{hostId}', null]);
    const ops = Object.fromEntries(doc.operations().all().map((o): [string, string] => [String(o.id()), o.action()]));
    expect(ops).toEqual({ sendChangeCD: 'send', receiveChangeCD: 'receive', sendResultEvent: 'send', sendDeadLetter: 'send', receiveResultEvents: 'receive' });
    // The event's payload is the TypeBox schema's: the same fields, the same required set.
    const event = doc.components().messages().get('resultEvent')!;
    const payload = event.payload()!;
    expect(Object.keys(payload.properties() ?? {})).toEqual(Object.keys(ResultEventSchema.properties));
    expect(payload.required()).toEqual(ResultEventSchema.required);
    expect(event.correlationId()?.location()).toBe('$message.header#/correlation_id');
    const events = doc.channels().get('events')!.bindings().get('amqp')!.value<{ exchange: { type: string; durable: boolean } }>();
    expect(events.exchange).toMatchObject({ name: 'cdrom.events', type: 'topic', durable: true });
    const commands = doc.channels().get('commands')!.bindings().get('amqp')!.value<Record<string, unknown>>();
    expect(commands).toMatchObject({ is: 'queue', 'x-queue-arguments': { 'x-queue-type': 'quorum' }, 'x-bound-to': { exchange: { name: 'cdrom.commands', type: 'direct' } } });
    const deadHeaders = doc.components().messages().get('deadLetter')!.headers()!.properties() ?? {};
    expect(Object.keys(deadHeaders)).toEqual(expect.arrayContaining(['x-cdrom-error-code', 'x-cdrom-error-message', 'x-cdrom-sender', 'x-cdrom-replayed']));
  });
});
