/**
 * Fingerprints of things seen once and not kept, for memos that keep an entry only on its second
 * sight (a one-off then leaves a short string behind, not its bytes). Bounded: past `max`, the
 * oldest fingerprint is forgotten, so that thing needs two more sights to be kept. "Oldest" is by
 * the last `note`: noting a fingerprint again makes it the newest.
 *
 * The order is a queue of notes beside the set, not the set's own insertion order: a full set
 * that dropped its first entry on every note (`set.values().next()`) made each note step over the
 * deleted entries V8 leaves at the front of the set's table until it rehashes, some 2,000 on
 * average at 4,096 fingerprints: 1.4–1.8 µs a note, on every log the verifier had not seen.
 */
export class FirstSights {
  /** Fingerprint → the sequence number of its last note (its place in `order`). */
  private readonly seen = new Map<string, number>();
  /** Fingerprints in the order noted; `order[i]` has sequence number `base + i`. An entry is stale when `seen` no longer maps it to that number. */
  private order: string[] = [];
  /** Sequence number of `order[0]`. */
  private base = 0;
  /** Entries of `order` before this index are passed over (emptied). */
  private head = 0;

  constructor(readonly max: number) {}

  get size(): number {
    return this.seen.size;
  }

  has(fingerprint: string): boolean {
    return this.seen.has(fingerprint);
  }

  /** Remembers a first sight (as the newest, if it was noted before). */
  note(fingerprint: string): void {
    this.seen.set(fingerprint, this.base + this.order.length);
    this.order.push(fingerprint);
    if (this.seen.size > this.max) this.dropOldest();
    // Rebuilt once the entries passed over and the stale ones (notes made again, forgotten
    // fingerprints) outnumber the live ones: at most 2 × max + 64 entries, a rebuild per max notes.
    if (this.order.length > 2 * this.seen.size + 64) this.compact();
  }

  /** Forgets a fingerprint (its entry is kept now). */
  forget(fingerprint: string): void {
    this.seen.delete(fingerprint);
  }

  /** Forgets the fingerprint noted longest ago (the set is not empty). */
  private dropOldest(): void {
    for (;;) {
      const f = this.order[this.head]!;
      const seq = this.base + this.head;
      // Passed over for good: the string is not held until the next rebuild.
      this.order[this.head] = '';
      this.head++;
      if (this.seen.get(f) === seq) {
        this.seen.delete(f);
        return;
      }
    }
  }

  /** `order` with only its live entries, in the same order (sequence numbers renumbered from 0). */
  private compact(): void {
    const live: string[] = [];
    for (let i = this.head; i < this.order.length; i++) {
      const f = this.order[i]!;
      if (this.seen.get(f) === this.base + i) {
        this.seen.set(f, live.length);
        live.push(f);
      }
    }
    this.order = live;
    this.base = 0;
    this.head = 0;
  }
}
