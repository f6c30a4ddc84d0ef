import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { eventProperties, rejectedEvent } from '../../src/consumers/events.publisher.js';
import type { ResultEvent } from '../../src/contracts/schemas.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const at = new Date('2026-12-01T10:00:00.000Z');

describe('eventProperties', () => {
  it('message_id is the commandId, so repeats of one command carry the same one', () => {
    const commandId = randomUUID();
    const event = rejectedEvent('h1', { code: 'INVALID_COMMAND', field: '/vmId', message: 'bad', ids: { commandId, vmId: null, drive: 'sdc' } }, at);
    const first = eventProperties(event, {}, at);
    expect(first).toMatchObject({ messageId: commandId, persistent: true, contentType: 'application/json', type: 'changeCD.rejected', appId: 'cdrom-worker', timestamp: at.getTime() / 1000 });
    expect(eventProperties(event, {}, new Date(at.getTime() + 5000)).messageId).toBe(commandId);
  });

  it('an event without a valid commandId gets a random UUID of its own each time', () => {
    const event: ResultEvent = rejectedEvent('h1', { code: 'UNAUTHORIZED_SENDER', field: '', message: 'x', ids: { commandId: null, vmId: null, drive: null } }, at);
    const a = eventProperties(event).messageId;
    const b = eventProperties(event).messageId;
    expect(a).toMatch(UUID);
    expect(b).toMatch(UUID);
    expect(a).not.toBe(b);
  });

  it("an UNAUTHORIZED_SENDER rejection does not take the commandId its untrusted body claims as message_id", () => {
    const commandId = randomUUID();
    const event = rejectedEvent('h1', { code: 'UNAUTHORIZED_SENDER', field: '', message: 'x', ids: { commandId, vmId: null, drive: null } }, at);
    expect(event.commandId).toBe(commandId);
    const id = eventProperties(event).messageId;
    expect(id).toMatch(UUID);
    expect(id).not.toBe(commandId);
  });

  it('carries the correlation_id, and never a user_id (the bus sets its own session user)', () => {
    const event = rejectedEvent('h1', { code: 'INVALID_COMMAND', field: '', message: 'x', ids: { commandId: null, vmId: null, drive: null } }, at);
    const props = eventProperties(event, { replyTo: 'q', correlationId: 'c-1' });
    expect(props.correlationId).toBe('c-1');
    expect(props).not.toHaveProperty('userId');
    expect(props).not.toHaveProperty('replyTo');
  });

  it('a rejected event carries its rejection code', () => {
    const event = rejectedEvent('h1', { code: 'UNAUTHORIZED_SENDER', field: '', message: 'sender "x" is not in CDROM_TRUSTED_SENDERS', ids: { commandId: null, vmId: null, drive: null } }, at);
    expect(event.error).toEqual({ code: 'UNAUTHORIZED_SENDER', message: 'sender "x" is not in CDROM_TRUSTED_SENDERS', retryable: false });
  });
});
