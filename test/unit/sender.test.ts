import { randomUUID } from 'node:crypto';
import type { MessageProperties } from 'amqplib';
import { describe, expect, it } from 'vitest';
import { senderOf, unauthorizedSender } from '../../src/consumers/sender.js';

function props(over: Partial<MessageProperties> = {}): MessageProperties {
  return {
    contentType: 'application/json',
    contentEncoding: undefined,
    headers: {},
    deliveryMode: 2,
    priority: undefined,
    correlationId: undefined,
    replyTo: undefined,
    expiration: undefined,
    messageId: undefined,
    timestamp: undefined,
    type: undefined,
    userId: undefined,
    appId: undefined,
    clusterId: undefined,
    ...over,
  };
}

const body = (v: unknown): Buffer => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v));

describe('unauthorizedSender (CDROM_TRUSTED_SENDERS)', () => {
  const commandId = randomUUID();
  const vmId = randomUUID();
  const valid = body({ type: 'changeCD', version: 1, commandId, vmId, drive: 'sdc', media: null });

  it('checks nothing when no list is configured, user_id or not', () => {
    expect(unauthorizedSender({ properties: props(), content: valid }, null)).toBeNull();
    expect(unauthorizedSender({ properties: props({ userId: 'anyone' }), content: valid }, null)).toBeNull();
  });

  it('lets a listed sender through', () => {
    expect(unauthorizedSender({ properties: props({ userId: 'ops' }), content: valid }, ['engine', 'ops'])).toBeNull();
  });

  it('rejects another sender, naming it, with the ids of a valid body', () => {
    const r = unauthorizedSender({ properties: props({ userId: 'cdrom-h2' }), content: valid }, ['engine']);
    expect(r).toEqual({ ok: false, rejection: { code: 'UNAUTHORIZED_SENDER', field: '', message: 'sender "cdrom-h2" is not in CDROM_TRUSTED_SENDERS', ids: { commandId, vmId, drive: 'sdc' } } });
  });

  it('rejects a command without user_id, whatever its body', () => {
    for (const content of [valid, body('not json'), Buffer.alloc(70 * 1024, 'x')]) {
      const r = unauthorizedSender({ properties: props(), content }, ['engine']);
      expect(r?.rejection.code).toBe('UNAUTHORIZED_SENDER');
      expect(r?.rejection.message).toMatch(/no user_id/);
    }
    // An empty user_id is no user_id.
    expect(unauthorizedSender({ properties: props({ userId: '' }), content: valid }, ['engine'])?.rejection.code).toBe('UNAUTHORIZED_SENDER');
  });

  it('names only the ids that are readable and valid, as other rejections do', () => {
    const r = unauthorizedSender({ properties: props({ userId: 'x' }), content: body({ commandId: 'not-a-uuid', vmId, drive: 'SDC!' }) }, ['engine']);
    expect(r?.rejection.ids).toEqual({ commandId: null, vmId, drive: null });
    expect(unauthorizedSender({ properties: props({ userId: 'x' }), content: body('{') }, ['engine'])?.rejection.ids).toEqual({ commandId: null, vmId: null, drive: null });
  });

  it('is case-sensitive, as broker user names are', () => {
    expect(unauthorizedSender({ properties: props({ userId: 'Engine' }), content: valid }, ['engine'])?.rejection.code).toBe('UNAUTHORIZED_SENDER');
  });

  it('senderOf reads user_id', () => {
    expect(senderOf(props({ userId: 'engine' }))).toBe('engine');
    expect(senderOf(props())).toBeUndefined();
  });
});
