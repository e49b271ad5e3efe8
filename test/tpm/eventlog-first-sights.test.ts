/**
 * FirstSights against a reference: the set it replaced, whose own insertion order was the age
 * order (note = delete + add; past max, the set's first entry went). Random sequences of notes,
 * forgets and lookups over a small alphabet (so fingerprints come back, are noted again while
 * known, and are forgotten while stale copies wait in the queue), with small and large bounds;
 * after every step both must hold exactly the same fingerprints.
 */
import { describe, expect, it } from 'vitest';
import { FirstSights } from '../../src/tpm/eventlog/first-sights.js';

class ReferenceFirstSights {
  private readonly seen = new Set<string>();
  constructor(readonly max: number) {}
  get size(): number {
    return this.seen.size;
  }
  has(f: string): boolean {
    return this.seen.has(f);
  }
  note(f: string): void {
    this.seen.delete(f);
    this.seen.add(f);
    if (this.seen.size > this.max) this.seen.delete(this.seen.values().next().value!);
  }
  forget(f: string): void {
    this.seen.delete(f);
  }
}

/** A small deterministic generator (xorshift32), so a failure names a reproducible seed. */
function rng(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

function run(seed: number, max: number, alphabet: number, steps: number, forgetRate: number): void {
  const r = rng(seed);
  const got = new FirstSights(max);
  const want = new ReferenceFirstSights(max);
  for (let s = 0; s < steps; s++) {
    const f = `fp${Math.floor(r() * alphabet)}`;
    const op = r();
    if (op < forgetRate) {
      got.forget(f);
      want.forget(f);
    } else if (op < forgetRate + 0.15) {
      if (got.has(f) !== want.has(f)) expect(got.has(f), `seed ${seed} step ${s}`).toBe(want.has(f));
    } else if (op < forgetRate + 0.3 || !want.has(f)) {
      // As the memos do: note what is not known (and sometimes what is, to move it to the newest).
      got.note(f);
      want.note(f);
    }
    if (got.size !== want.size) expect(got.size, `seed ${seed} step ${s}`).toBe(want.size);
    if (s % (alphabet > 100 ? 1009 : 7) === 0 || s === steps - 1) {
      const differ: string[] = [];
      for (let k = 0; k < alphabet; k++) if (got.has(`fp${k}`) !== want.has(`fp${k}`)) differ.push(`fp${k}`);
      expect(differ, `seed ${seed} step ${s}`).toEqual([]);
    }
  }
}

describe('FirstSights (oldest-noted fingerprint out first, as the set it replaced)', () => {
  it('holds the same fingerprints as the reference after every step (small bounds, many repeats)', () => {
    for (let seed = 1; seed <= 200; seed++) run(seed, 1 + (seed % 8), 3 + (seed % 13), 600, (seed % 5) * 0.05);
  });

  it('holds the same fingerprints through many rebuilds of its queue (a full set, mostly new fingerprints)', () => {
    for (let seed = 1; seed <= 6; seed++) run(seed * 7919, 64, 400, 20_000, 0.02);
    run(424242, 4096, 10_000, 40_000, 0.01);
  });

  it('forgets the oldest noted first, a fingerprint noted again counting as new', () => {
    const f = new FirstSights(3);
    f.note('a');
    f.note('b');
    f.note('c');
    f.note('a');
    f.note('d');
    expect(['a', 'b', 'c', 'd'].filter((x) => f.has(x))).toEqual(['a', 'c', 'd']);
    f.forget('c');
    f.note('e');
    expect(['a', 'b', 'c', 'd', 'e'].filter((x) => f.has(x))).toEqual(['a', 'd', 'e']);
    expect(f.size).toBe(3);
  });
});
