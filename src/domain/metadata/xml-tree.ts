import { XMLParser } from 'fast-xml-parser';

/**
 * A thin, order-preserving XML tree over fast-xml-parser's `preserveOrder` form, so that
 * whatever we do not understand in a metadata element survives a round trip: unknown
 * elements, attributes, text and the whitespace between them.
 */

export type XmlNode = XmlElement | XmlText;

export interface XmlText {
  readonly '#text': string;
}

/** `{ [tagName]: children, ':@': { '@_attr': value } }` */
export interface XmlElement {
  [tag: string]: XmlNode[] | Record<string, string> | undefined;
  ':@'?: Record<string, string>;
}

const ATTR = '@_';

const parser = new XMLParser({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: ATTR,
  parseTagValue: false,
  parseAttributeValue: false,
  trimValues: false,
  // Entities are left as written: unknown content round-trips byte for byte, and the few
  // values we read or write are escaped here (fast-xml-parser's decoder dominated a profile).
  processEntities: false,
  htmlEntities: false,
  ignoreDeclaration: true,
  ignorePiTags: true,
});

const ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };
const UNESCAPES: Record<string, string> = { amp: '&', lt: '<', gt: '>', quot: '"', apos: "'" };

/** For attribute values. */
export function escapeXml(value: string): string {
  return /[&<>"']/.test(value) ? value.replace(/[&<>"']/g, (c) => ESCAPES[c] as string) : value;
}

/** For text content, where quotes need no escaping (JSON in the journal is full of them). */
function escapeText(value: string): string {
  return /[&<>]/.test(value) ? value.replace(/[&<>]/g, (c) => ESCAPES[c] as string) : value;
}

export function unescapeXml(value: string): string {
  if (!value.includes('&')) return value;
  return value.replace(/&(#x[0-9a-fA-F]+|#[0-9]+|amp|lt|gt|quot|apos);/g, (whole, name: string) => {
    if (name.startsWith('#x')) return String.fromCodePoint(parseInt(name.slice(2), 16));
    if (name.startsWith('#')) return String.fromCodePoint(parseInt(name.slice(1), 10));
    return UNESCAPES[name] ?? whole;
  });
}

export function isText(node: XmlNode): node is XmlText {
  return Object.prototype.hasOwnProperty.call(node, '#text');
}

export function tagOf(node: XmlNode): string | null {
  if (isText(node)) return null;
  for (const key of Object.keys(node)) if (key !== ':@') return key;
  return null;
}

export function localName(tag: string): string {
  const i = tag.indexOf(':');
  return i < 0 ? tag : tag.slice(i + 1);
}

export function prefixOf(tag: string): string | null {
  const i = tag.indexOf(':');
  return i < 0 ? null : tag.slice(0, i);
}

export function childrenOf(node: XmlElement): XmlNode[] {
  const tag = tagOf(node);
  if (tag === null) return [];
  const children = node[tag];
  return Array.isArray(children) ? children : [];
}

export function setChildren(node: XmlElement, children: XmlNode[]): XmlElement {
  const tag = tagOf(node);
  if (tag === null) throw new Error('not an element');
  const out: XmlElement = { [tag]: children };
  if (node[':@'] !== undefined) out[':@'] = node[':@'];
  return out;
}

export function attrOf(node: XmlElement, name: string): string | undefined {
  const raw = node[':@']?.[ATTR + name];
  return raw === undefined ? undefined : unescapeXml(raw);
}

export function withAttr(node: XmlElement, name: string, value: string | undefined): XmlElement {
  const attrs = { ...(node[':@'] ?? {}) };
  if (value === undefined) delete attrs[ATTR + name];
  else attrs[ATTR + name] = escapeXml(value);
  const tag = tagOf(node);
  if (tag === null) throw new Error('not an element');
  const out: XmlElement = { [tag]: childrenOf(node) };
  if (Object.keys(attrs).length > 0) out[':@'] = attrs;
  return out;
}

export function element(tag: string, attrs: Record<string, string>, children: XmlNode[]): XmlElement {
  const out: XmlElement = { [tag]: children };
  if (Object.keys(attrs).length > 0) {
    out[':@'] = Object.fromEntries(Object.entries(attrs).map(([k, v]) => [ATTR + k, escapeXml(v)]));
  }
  return out;
}

/** A text node holding `value` (escaped as XML needs). */
export function text(value: string): XmlText {
  return { '#text': escapeText(value) };
}

/** The text content of an element (its direct text children, concatenated). */
export function textOf(node: XmlElement): string {
  return childrenOf(node)
    .filter(isText)
    .map((t) => unescapeXml(t['#text']))
    .join('');
}

export function elementChildren(node: XmlElement): XmlElement[] {
  return childrenOf(node).filter((n): n is XmlElement => !isText(n));
}

/**
 * Parses one XML document and returns its root element, deeply frozen: trees are shared
 * (parsed documents are cached), so every edit must copy.
 */
export function parseXml(xml: string): XmlElement {
  const nodes = parser.parse(xml) as XmlNode[];
  const root = nodes.find((n): n is XmlElement => !isText(n));
  if (root === undefined) throw new Error('XML has no root element');
  return deepFreeze(root);
}

function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}

/**
 * Serialises a tree back to XML, as compact as it was parsed (whitespace is in the text
 * nodes). Text and attribute values are kept escaped as parsed or built; an attribute
 * value only has its quotes escaped. Elements with no content (or only empty text) are written `<tag/>`. Hand-written:
 * fast-xml-parser's builder was the top cost of a metadata write in a profile.
 */
export function buildXml(root: XmlElement): string {
  const out: string[] = [];
  writeElement(root, out);
  return out.join('');
}

function writeElement(node: XmlElement, out: string[]): void {
  const tag = tagOf(node);
  if (tag === null) return;
  out.push('<', tag);
  const attrs = node[':@'];
  if (attrs !== undefined) {
    for (const key in attrs) {
      const value = attrs[key] as string;
      out.push(' ', key.startsWith(ATTR) ? key.slice(ATTR.length) : key, '="', value.includes('"') || value.includes("'") ? value.replace(/"/g, '&quot;').replace(/'/g, '&apos;') : value, '"');
    }
  }
  const children = node[tag];
  if (!Array.isArray(children) || children.every((c) => isText(c) && c['#text'] === '')) {
    out.push('/>');
    return;
  }
  out.push('>');
  for (const child of children) {
    if (isText(child)) out.push(child['#text']);
    else writeElement(child, out);
  }
  out.push('</', tag, '>');
}

/**
 * Removes `index` from `children`, with the whitespace-only text before it, so that
 * repeated edits do not pile up blank lines.
 */
export function removeAt(children: XmlNode[], index: number): XmlNode[] {
  const out = children.slice();
  out.splice(index, 1);
  const prev = out[index - 1];
  if (index > 0 && prev !== undefined && isText(prev) && prev['#text'].trim() === '') out.splice(index - 1, 1);
  return out;
}

/** Appends `node` before the trailing whitespace, indented like its siblings. */
export function appendIndented(children: XmlNode[], node: XmlNode): XmlNode[] {
  const out = children.slice();
  const last = out[out.length - 1];
  const trailing = last !== undefined && isText(last) && last['#text'].trim() === '' ? out.pop() : undefined;
  const firstWs = out.find((n): n is XmlText => isText(n) && n['#text'].trim() === '');
  if (firstWs !== undefined) out.push(text(firstWs['#text']));
  out.push(node);
  out.push(trailing ?? (firstWs !== undefined ? text('\n') : text('')));
  return out.filter((n) => !(isText(n) && n['#text'] === ''));
}
