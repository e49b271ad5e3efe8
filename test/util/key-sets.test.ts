import { describe, expect, it } from 'vitest';
import { KeySets } from '../../src/util/key-sets.js';

const values = (k: KeySets<{ n: number }>, key: string) => {
  const out: number[] = [];
  k.forEach(key, (v) => out.push(v.n));
  return out.sort((a, b) => a - b);
};

describe('KeySets', () => {
  it('holds one value, then a set, then one again, and forgets an emptied key', () => {
    const k = new KeySets<{ n: number }>();
    const [a, b, c] = [{ n: 1 }, { n: 2 }, { n: 3 }];
    k.add('x', a);
    k.add('x', a);
    expect([k.count('x'), values(k, 'x')]).toEqual([1, [1]]);
    k.add('x', b);
    k.add('x', c);
    expect([k.count('x'), values(k, 'x')]).toEqual([3, [1, 2, 3]]);
    k.delete('x', b);
    k.delete('x', b);
    expect(values(k, 'x')).toEqual([1, 3]);
    k.delete('x', a);
    expect([k.count('x'), values(k, 'x')]).toEqual([1, [3]]);
    k.delete('x', a); // not there: nothing changes
    expect(values(k, 'x')).toEqual([3]);
    k.delete('x', c);
    expect([k.count('x'), values(k, 'x'), k.size]).toEqual([0, [], 0]);
    k.delete('nothing', a);
    expect(k.size).toBe(0);
  });

  it('agrees with a map of sets over random adds and deletes', () => {
    const k = new KeySets<{ n: number }>();
    const ref = new Map<string, Set<{ n: number }>>();
    const objs = Array.from({ length: 8 }, (_, n) => ({ n }));
    let seed = 7;
    const rnd = (m: number) => (seed = (seed * 1103515245 + 12345) % 2 ** 31) % m;
    for (let i = 0; i < 5000; i++) {
      const key = `k${rnd(5)}`;
      const v = objs[rnd(objs.length)] as { n: number };
      if (rnd(2) === 0) {
        k.add(key, v);
        (ref.get(key) ?? ref.set(key, new Set()).get(key))!.add(v);
      } else {
        k.delete(key, v);
        ref.get(key)?.delete(v);
        if (ref.get(key)?.size === 0) ref.delete(key);
      }
      expect(values(k, key)).toEqual([...(ref.get(key) ?? [])].map((o) => o.n).sort((a, b) => a - b));
      expect(k.count(key)).toBe(ref.get(key)?.size ?? 0);
    }
    expect(k.size).toBe(ref.size);
  });
});
