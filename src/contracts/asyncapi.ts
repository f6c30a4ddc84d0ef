import { stringify } from 'yaml';
import { ERROR_CODES } from '../domain/errors.js';
// The broker names and header names come from the code that uses them, not restated
// here: the document cannot drift from what the worker declares and sends.
import { COMMANDS_EXCHANGE, DEAD_EXCHANGE, EVENTS_EXCHANGE, commandsQueue, deadQueue, eventRoutingKey } from '../consumers/topology.js';
import { ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER, REPLAYED_HEADER, SENDER_HEADER } from '../consumers/message-props.js';
import { ChangeCdCommandSchema, LegacyPathSchema, PdivSchema, ResultEventSchema } from './schemas.js';

/**
 * The wire contract (CONTRACT.md sections 2, 3, 4 and 6) as an AsyncAPI 3.0 document,
 * built from the same TypeBox schemas as schemas/*.json. `npm run schemas` writes it to
 * schemas/asyncapi.yaml; a test fails when that file is stale, another parses it.
 *
 * AMQP modelling: the AMQP binding (0.3.0) describes a channel either as an exchange with
 * a routing key or as a queue, never both, and has no field for queue arguments or for
 * most basic properties. So:
 * - cdrom.events is an exchange channel (address = routing key pattern);
 * - the two per-host queues are queue channels; the exchange and routing key that feed
 *   them, and their `x-queue-type`, are in `x-` extensions of the binding;
 * - the AMQP basic properties the contract relies on (user_id, reply_to, correlation_id,
 *   message_id) appear in each message's `headers` schema next to the application
 *   headers (x-cdrom-*), each saying which it is, so that `correlationId` and the reply
 *   address can point at them with runtime expressions.
 */

const AMQP_BINDING = '0.3.0';
const HOST_ID_PATTERN = '^[A-Za-z0-9_-]{1,64}$';

/** A schema as plain JSON, without TypeBox's symbols and with the shared media by $ref. */
function plain(schema: object): Record<string, unknown> {
  const shared = new Map<unknown, string>([
    [PdivSchema.$id, '#/components/schemas/Pdiv'],
    [LegacyPathSchema.$id, '#/components/schemas/LegacyPath'],
  ]);
  // One $id per document: the media schemas appear several times in an event (previous,
  // current), and repeated $ids make JSON Schema tools refuse the whole document.
  const walk = (value: unknown, top: boolean): unknown => {
    if (Array.isArray(value)) return value.map((v) => walk(v, false));
    if (value === null || typeof value !== 'object') return value;
    const obj = value as Record<string, unknown>;
    const ref = shared.get(obj['$id']);
    if (!top && ref !== undefined) return { $ref: ref };
    return Object.fromEntries(Object.entries(obj).filter(([k]) => k !== '$id').map(([k, v]) => [k, walk(v, false)]));
  };
  return walk(JSON.parse(JSON.stringify(schema)), true) as Record<string, unknown>;
}

const str = (description: string, extra: Record<string, unknown> = {}): Record<string, unknown> => ({ type: 'string', description, ...extra });

/** W3C trace context (the worker's OpenTelemetry tracing): `from` says which side sets it. */
const traceHeaders = (from: string): Record<string, unknown> => ({
  traceparent: str(`Application header, optional: W3C Trace Context \`traceparent\`; ${from}.`, { pattern: '^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' }),
  tracestate: str('Application header, optional: W3C Trace Context `tracestate`, carried with `traceparent`.'),
});

const amqpProperty = (name: string, text: string, extra: Record<string, unknown> = {}): Record<string, unknown> => str(`AMQP basic property \`${name}\` (not an application header). ${text}`, extra);

function commandHeaders(): Record<string, unknown> {
  return {
    type: 'object',
    properties: {
      user_id: amqpProperty('user_id', "The publisher's own broker login (RabbitMQ refuses any other value). Required when the worker runs with CDROM_TRUSTED_SENDERS: missing or not listed, the command is rejected UNAUTHORIZED_SENDER (CONTRACT 3, v1.1)."),
      reply_to: amqpProperty('reply_to', 'Optional. The result event is also sent there, via the default exchange, best effort; `amq.rabbitmq.reply-to` (direct reply-to) works. Not followed for UNAUTHORIZED_SENDER.'),
      correlation_id: amqpProperty('correlation_id', 'Optional; copied onto the result event (both copies). The client sets it to the commandId.'),
      message_id: amqpProperty('message_id', 'Recommended: the commandId. Names the message in `dlq list`.'),
      content_type: amqpProperty('content_type', '', { const: 'application/json' }),
      delivery_mode: { type: 'integer', const: 2, description: 'AMQP basic property `delivery_mode`: persistent.' },
      [REPLAYED_HEADER]: { type: 'integer', minimum: 1, description: 'Application header: set by `dlq replay`, how many times this message was replayed from the dead-letter queue.' },
      ...traceHeaders("the sender's trace: the worker's span for the command continues it"),
    },
  };
}

function eventHeaders(): Record<string, unknown> {
  return {
    type: 'object',
    properties: {
      message_id: amqpProperty('message_id', "The event's commandId, so repeats of one command (redelivery, re-send) share it; a fresh UUID when the event has no valid commandId or is an UNAUTHORIZED_SENDER rejection."),
      correlation_id: amqpProperty('correlation_id', "The command's correlation_id, when it had one."),
      user_id: amqpProperty('user_id', "The worker's own broker user."),
      type: amqpProperty('type', "The event's `type`: changeCD.completed, changeCD.failed or changeCD.rejected.", { enum: ['changeCD.completed', 'changeCD.failed', 'changeCD.rejected'] }),
      app_id: amqpProperty('app_id', '', { const: 'cdrom-worker' }),
      content_type: amqpProperty('content_type', '', { const: 'application/json' }),
      delivery_mode: { type: 'integer', const: 2, description: 'AMQP basic property `delivery_mode`: persistent.' },
      ...traceHeaders("the worker's span for the command, when tracing is on"),
    },
  };
}

function deadLetterHeaders(): Record<string, unknown> {
  return {
    type: 'object',
    description: "The original command's properties and headers, unchanged, plus these.",
    properties: {
      [ERROR_CODE_HEADER]: str('Application header: the code of the rejection, or of the last error after the retry budget.', { enum: [...ERROR_CODES] }),
      [ERROR_MESSAGE_HEADER]: str('Application header: that error in words (at most 1000 characters).', { maxLength: 1000 }),
      [SENDER_HEADER]: str("Application header: the original's user_id, moved here because the dead letter is published as the worker (user_id = the worker's user)."),
      [REPLAYED_HEADER]: { type: 'integer', minimum: 1, description: 'Application header, kept from the original when it had been replayed before.' },
      user_id: amqpProperty('user_id', "The worker's own broker user."),
      message_id: amqpProperty('message_id', "The original's; `dlq list` shows it as the message's ID."),
    },
    required: [ERROR_CODE_HEADER, ERROR_MESSAGE_HEADER],
  };
}

const queueBinding = (queue: string, exchange: string, description: string): Record<string, unknown> => ({
  amqp: {
    is: 'queue',
    queue: { name: queue, durable: true, exclusive: false, autoDelete: false, vhost: '/' },
    'x-queue-arguments': { 'x-queue-type': 'quorum' },
    'x-bound-to': { exchange: { name: exchange, type: 'direct', durable: true, autoDelete: false }, routingKey: '{hostId}', description },
    bindingVersion: AMQP_BINDING,
  },
});

const hostIdParameter = { description: `The worker's CDROM_HOST_ID, matching ${HOST_ID_PATTERN}.`, examples: ['host-1'] };

/** The AsyncAPI document as an object. */
export function asyncApiDocument(): Record<string, unknown> {
  const replyAddress = { description: "The command's reply_to (a queue, via the default exchange).", location: '$message.header#/reply_to' };
  const correlation = { description: 'AMQP property correlation_id: the result event carries the command\'s (the client uses the commandId).', location: '$message.header#/correlation_id' };
  return {
    asyncapi: '3.0.0',
    info: {
      title: 'cdrom-worker',
      version: '1.1.0',
      description:
        'Per-host worker that changes CD-ROM media in libvirt VMs (oVirt changeCD). The engine sends changeCD commands to a host; the worker answers each with a result event on cdrom.events (and, with reply_to, a copy to that queue); commands it cannot understand, or that fail after the retry budget, go to the host\'s dead-letter queue. Contract v1.1 (CONTRACT.md). Generated by `npm run schemas` from src/contracts/schemas.ts: do not edit.',
      license: { name: 'Apache-2.0' },
      tags: [
        { name: 'engine', description: 'sends commands' },
        { name: 'worker', description: 'one per hypervisor host' },
        { name: 'monitoring', description: 'follows result events' },
      ],
    },
    defaultContentType: 'application/json',
    servers: {
      broker: { host: '127.0.0.1:5672', protocol: 'amqp', protocolVersion: '0-9-1', description: 'RabbitMQ (3.10 or later: quorum queues). CDROM_AMQP_URL names it; amqps works too, and a list of cluster nodes is tried in turn.' },
    },
    channels: {
      commands: {
        address: commandsQueue('{hostId}'),
        title: 'changeCD commands for one host',
        description: `Published to exchange ${COMMANDS_EXCHANGE} (direct, durable) with routing key = hostId, persistent, JSON; the host's queue ${commandsQueue('{hostId}')} (quorum, durable) holds them. The worker acks a command only after its result event is confirmed.`,
        parameters: { hostId: hostIdParameter },
        messages: { changeCD: { $ref: '#/components/messages/changeCD' } },
        bindings: queueBinding(commandsQueue('{hostId}'), COMMANDS_EXCHANGE, 'the engine publishes here; the worker consumes the queue'),
      },
      events: {
        address: eventRoutingKey('{hostId}', '{outcome}'),
        title: 'result events',
        description: `Exchange ${EVENTS_EXCHANGE} (topic, durable); routing key ${eventRoutingKey('<hostId>', '<outcome>')}. Every accepted command yields at least one event; a repeat (redelivery, same commandId again) yields one with the same commandId, outcome, action, previous and current.`,
        parameters: {
          hostId: hostIdParameter,
          outcome: { description: 'The outcome, also the event type without `changeCD.`.', enum: ['completed', 'failed', 'rejected'] },
        },
        messages: { resultEvent: { $ref: '#/components/messages/resultEvent' } },
        bindings: { amqp: { is: 'routingKey', exchange: { name: EVENTS_EXCHANGE, type: 'topic', durable: true, autoDelete: false, vhost: '/' }, bindingVersion: AMQP_BINDING } },
      },
      dead: {
        address: deadQueue('{hostId}'),
        title: "a host's dead letters",
        description: `Published to exchange ${DEAD_EXCHANGE} (direct, durable) with routing key = hostId; queue ${deadQueue('{hostId}')} (quorum, durable). Rejected commands (never retried) and commands that failed after the retry budget, body and properties unchanged. \`cdrom-worker dlq list|show|replay|purge\` works on it.`,
        parameters: { hostId: hostIdParameter },
        messages: { deadLetter: { $ref: '#/components/messages/deadLetter' } },
        bindings: queueBinding(deadQueue('{hostId}'), DEAD_EXCHANGE, 'the worker publishes here; operators read the queue'),
      },
      replies: {
        address: null,
        title: 'reply_to copies',
        description: "The queue a command's reply_to names, reached through the default exchange; a best-effort copy of the result event (the cdrom.events copy is the one that counts). For the engine-side client: RabbitMQ's direct reply-to, amq.rabbitmq.reply-to.",
        messages: { resultEvent: { $ref: '#/components/messages/resultEvent' } },
      },
    },
    operations: {
      sendChangeCD: {
        action: 'send',
        channel: { $ref: '#/channels/commands' },
        title: 'engine sends a changeCD',
        summary: 'Publish a command to a host; with reply_to, await its event there (the cdrom-worker/client does, with direct reply-to).',
        tags: [{ name: 'engine' }],
        messages: [{ $ref: '#/channels/commands/messages/changeCD' }],
        bindings: { amqp: { deliveryMode: 2, mandatory: true, bindingVersion: AMQP_BINDING } },
        reply: { address: replyAddress, channel: { $ref: '#/channels/replies' }, messages: [{ $ref: '#/channels/replies/messages/resultEvent' }] },
      },
      receiveChangeCD: {
        action: 'receive',
        channel: { $ref: '#/channels/commands' },
        title: 'worker runs a changeCD',
        summary: 'Consume the host\'s queue; ack after the result event is confirmed.',
        tags: [{ name: 'worker' }],
        messages: [{ $ref: '#/channels/commands/messages/changeCD' }],
        bindings: { amqp: { ack: true, bindingVersion: AMQP_BINDING } },
        reply: { address: replyAddress, channel: { $ref: '#/channels/replies' }, messages: [{ $ref: '#/channels/replies/messages/resultEvent' }] },
      },
      sendResultEvent: {
        action: 'send',
        channel: { $ref: '#/channels/events' },
        title: 'worker publishes a result event',
        tags: [{ name: 'worker' }],
        messages: [{ $ref: '#/channels/events/messages/resultEvent' }],
        bindings: { amqp: { deliveryMode: 2, timestamp: true, bindingVersion: AMQP_BINDING } },
      },
      sendDeadLetter: {
        action: 'send',
        channel: { $ref: '#/channels/dead' },
        title: 'worker dead-letters a command',
        tags: [{ name: 'worker' }],
        messages: [{ $ref: '#/channels/dead/messages/deadLetter' }],
        bindings: { amqp: { deliveryMode: 2, bindingVersion: AMQP_BINDING } },
      },
      receiveResultEvents: {
        action: 'receive',
        channel: { $ref: '#/channels/events' },
        title: 'monitoring follows result events',
        summary: 'Bind a queue of your own to cdrom.events with a routing key pattern, e.g. `*.changeCD.failed` (`cdrom-worker events`, client.events() do, with an exclusive auto-delete queue).',
        tags: [{ name: 'monitoring' }, { name: 'engine' }],
        messages: [{ $ref: '#/channels/events/messages/resultEvent' }],
      },
    },
    components: {
      schemas: {
        Pdiv: plain(PdivSchema),
        LegacyPath: plain(LegacyPathSchema),
        ChangeCdCommand: plain(ChangeCdCommandSchema),
        ResultEvent: plain(ResultEventSchema),
      },
      messages: {
        changeCD: {
          name: 'changeCD',
          title: 'changeCD command v1',
          summary: 'Load (PDIV or legacy path) or eject (null) the media of one CD-ROM drive.',
          contentType: 'application/json',
          headers: commandHeaders(),
          payload: { $ref: '#/components/schemas/ChangeCdCommand' },
          correlationId: correlation,
        },
        resultEvent: {
          name: 'resultEvent',
          title: 'changeCD result event v1',
          summary: 'What became of one command: completed, failed or rejected.',
          contentType: 'application/json',
          headers: eventHeaders(),
          payload: { $ref: '#/components/schemas/ResultEvent' },
          correlationId: correlation,
        },
        deadLetter: {
          name: 'deadLetter',
          title: 'dead-lettered command',
          summary: 'The original command, body and properties unchanged (the body may not even be JSON), with the reason in headers.',
          headers: deadLetterHeaders(),
          payload: { description: 'The original body, byte for byte: usually a changeCD command, but whatever was received.' },
        },
      },
    },
  };
}

/** schemas/asyncapi.yaml, as `npm run schemas` writes it. */
export function asyncApiYaml(): string {
  const header = '# Generated by `npm run schemas` from src/contracts (asyncapi.ts, schemas.ts): do not edit.\n';
  return header + stringify(asyncApiDocument(), { lineWidth: 0, aliasDuplicateObjects: false });
}
