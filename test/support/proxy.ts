/**
 * `target` with some members replaced (the rest bound to it): wraps a real binding object
 * (a connection, a domain) to count or drop what passes through, in the tests that
 * check what the adapter asks libvirt.
 */
export function bind<T extends object>(target: T, overrides: Partial<Record<PropertyKey, unknown>>): T {
  return new Proxy(target, {
    get(t, prop) {
      if (prop in overrides) return overrides[prop];
      const v: unknown = Reflect.get(t, prop, t);
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
}
