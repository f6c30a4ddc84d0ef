import type { MetadataNamespace } from '../../domain/ports.js';
import { buildXml, childrenOf, isText, localName, parseXml, prefixOf, tagOf, type XmlElement, type XmlNode } from '../../domain/metadata/xml-tree.js';

/**
 * libvirt's metadata API speaks a namespace-less dialect: virDomainSetMetadata wants the
 * element with no prefix and no xmlns (it puts every element into the namespace itself,
 * under the prefix passed as "key"; a prefixed element with its own xmlns:prefix makes
 * it fail with "failed to create a new XML namespace"), and virDomainGetMetadata returns
 * it the same way, unprefixed. The port speaks the form the domain XML shows:
 * `<ovirt-vm:vm xmlns:ovirt-vm="…">` with every element prefixed. These two functions
 * translate between the two.
 */

type AttrMap = (a: Record<string, string>, isRoot: boolean) => Record<string, string>;

function mapElements(node: XmlElement, rename: (tag: string) => string, attrs: AttrMap, isRoot = true): XmlElement {
  const tag = tagOf(node);
  if (tag === null) return node;
  const children: XmlNode[] = childrenOf(node).map((c) => (isText(c) ? c : mapElements(c, rename, attrs, false)));
  const out: XmlElement = { [rename(tag)]: children };
  const a = attrs({ ...(node[':@'] ?? {}) }, isRoot);
  if (Object.keys(a).length > 0) out[':@'] = a;
  return out;
}

/** The port's prefixed form → what virDomainSetMetadata accepts. */
export function toLibvirtMetadata(xml: string, ns: MetadataNamespace): string {
  const root = parseXml(xml);
  const rootTag = tagOf(root) ?? '';
  const rootPrefix = prefixOf(rootTag);
  if (rootPrefix !== null && rootPrefix !== ns.prefix) {
    throw new Error(`metadata root <${rootTag}> is not in prefix ${ns.prefix}`);
  }
  const stripped = mapElements(
    root,
    (tag) => (prefixOf(tag) === ns.prefix ? localName(tag) : tag),
    (a) => {
      delete a[`@_xmlns:${ns.prefix}`];
      if (a['@_xmlns'] === ns.uri) delete a['@_xmlns'];
      return a;
    },
  );
  return buildXml(stripped);
}

/** What virDomainGetMetadata returns → the port's prefixed form. */
export function fromLibvirtMetadata(xml: string, ns: MetadataNamespace): string {
  const root = parseXml(xml);
  const prefixed = mapElements(
    root,
    (tag) => (prefixOf(tag) === null ? `${ns.prefix}:${tag}` : tag),
    (a, isRoot) => {
      // libvirt may echo a declaration of the key prefix on the root; keep exactly one.
      delete a[`@_xmlns:${ns.prefix}`];
      if (a['@_xmlns'] === ns.uri) delete a['@_xmlns'];
      return isRoot ? { [`@_xmlns:${ns.prefix}`]: ns.uri, ...a } : a;
    },
  );
  return buildXml(prefixed);
}
