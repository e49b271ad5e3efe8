import { describe, expect, it } from 'vitest';
import { LinkedList } from '../../src/agent/workload-api/linked-list.js';

describe('LinkedList', () => {
  it('keeps insertion order and size across removals from the head, middle and tail', () => {
    const l = new LinkedList<string>();
    const a = l.add('a');
    const b = l.add('b');
    const c = l.add('c');
    const d = l.add('d');
    expect(l.values()).toEqual(['a', 'b', 'c', 'd']);
    l.remove(b);
    expect(l.values()).toEqual(['a', 'c', 'd']);
    l.remove(a);
    expect(l.values()).toEqual(['c', 'd']);
    l.remove(d);
    expect(l.values()).toEqual(['c']);
    expect(l.size).toBe(1);
    l.remove(c);
    expect(l.values()).toEqual([]);
    expect(l.size).toBe(0);
    l.add('e');
    expect(l.values()).toEqual(['e']);
  });

  it('ignores a second removal of the same node', () => {
    const l = new LinkedList<number>();
    const one = l.add(1);
    l.add(2);
    l.remove(one);
    l.remove(one);
    expect(l.size).toBe(1);
    expect(l.values()).toEqual([2]);
  });

  it('lets callers remove members while walking a copy of them', () => {
    const l = new LinkedList<number>();
    const nodes = [1, 2, 3, 4].map((n) => l.add(n));
    const seen: number[] = [];
    for (const v of l.values()) {
      seen.push(v);
      for (const n of nodes) l.remove(n);
    }
    expect(seen).toEqual([1, 2, 3, 4]);
    expect(l.size).toBe(0);
  });
});
