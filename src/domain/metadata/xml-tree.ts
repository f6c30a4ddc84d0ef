import { XMLBuilder, XMLParser } from 'fast-xml-parser';

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
  processEntities: true,
  ignoreDeclaration: true,
  ignorePiTags: true,
});

const builder = new XMLBuilder({
  preserveOrder: true,
  ignoreAttributes: false,
  attributeNamePrefix: ATTR,
  format: false,
  suppressEmptyNode: true,
  processEntities: true,
});

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
  return node[':@']?.[ATTR + name];
}

export function withAttr(node: XmlElement, name: string, value: string | undefined): XmlElement {
  const attrs = { ...(node[':@'] ?? {}) };
  if (value === undefined) delete attrs[ATTR + name];
  else attrs[ATTR + name] = value;
  const tag = tagOf(node);
  if (tag === null) throw new Error('not an element');
  const out: XmlElement = { [tag]: childrenOf(node) };
  if (Object.keys(attrs).length > 0) out[':@'] = attrs;
  return out;
}

export function element(tag: string, attrs: Record<string, string>, children: XmlNode[]): XmlElement {
  const out: XmlElement = { [tag]: children };
  if (Object.keys(attrs).length > 0) {
    out[':@'] = Object.fromEntries(Object.entries(attrs).map(([k, v]) => [ATTR + k, v]));
  }
  return out;
}

export function text(value: string): XmlText {
  return { '#text': value };
}

/** The text content of an element (its direct text children, concatenated). */
export function textOf(node: XmlElement): string {
  return childrenOf(node)
    .filter(isText)
    .map((t) => t['#text'])
    .join('');
}

export function elementChildren(node: XmlElement): XmlElement[] {
  return childrenOf(node).filter((n): n is XmlElement => !isText(n));
}

/** Parses one XML document and returns its root element. */
export function parseXml(xml: string): XmlElement {
  const nodes = parser.parse(xml) as XmlNode[];
  const root = nodes.find((n): n is XmlElement => !isText(n));
  if (root === undefined) throw new Error('XML has no root element');
  return root;
}

export function buildXml(root: XmlElement): string {
  return builder.build([root]);
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
