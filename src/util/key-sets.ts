/**
 * Values filed under string keys, a value under many keys (a multimap of sets). Most keys of the
 * authorized-set cache's long-poll index hold one value (an entry's SPIFFE ID is a parent in one
 * agent's set), so a key holds the value itself until a second one comes: a `Set` per key would be
 * ~100 bytes each for ~100,000 keys at 10,000 held long-polls. Values must be objects (a `Set` value
 * is told apart by `instanceof`).
 */
export class KeySets<V extends object> {
  private readonly m = new Map<string, V | Set<V>>();

  add(key: string, v: V): void {
    const cur = this.m.get(key);
    if (cur === undefined) this.m.set(key, v);
    else if (cur instanceof Set) cur.add(v);
    else if (cur !== v) this.m.set(key, new Set([cur, v]));
  }

  delete(key: string, v: V): void {
    const cur = this.m.get(key);
    if (cur === undefined) return;
    if (cur instanceof Set) {
      cur.delete(v);
      if (cur.size === 1) this.m.set(key, cur.values().next().value as V);
    } else if (cur === v) this.m.delete(key);
  }

  /** How many values `key` holds. */
  count(key: string): number {
    const cur = this.m.get(key);
    return cur === undefined ? 0 : cur instanceof Set ? cur.size : 1;
  }

  /** Calls `fn` for every value under `key`. */
  forEach(key: string, fn: (v: V) => void): void {
    const cur = this.m.get(key);
    if (cur === undefined) return;
    if (cur instanceof Set) for (const v of cur) fn(v);
    else fn(cur);
  }

  /** Keys held (for tests and metrics). */
  get size(): number {
    return this.m.size;
  }
}
