/**
 * Fingerprints of things seen once and not kept, for memos that keep an entry only on its second
 * sight (a one-off then leaves a short string behind, not its bytes). Bounded: past `max`, the
 * oldest fingerprint is forgotten, so that thing needs two more sights to be kept.
 */
export class FirstSights {
  private readonly seen = new Set<string>();

  constructor(readonly max: number) {}

  get size(): number {
    return this.seen.size;
  }

  has(fingerprint: string): boolean {
    return this.seen.has(fingerprint);
  }

  /** Remembers a first sight. */
  note(fingerprint: string): void {
    this.seen.delete(fingerprint);
    this.seen.add(fingerprint);
    if (this.seen.size > this.max) this.seen.delete(this.seen.values().next().value!);
  }

  /** Forgets a fingerprint (its entry is kept now). */
  forget(fingerprint: string): void {
    this.seen.delete(fingerprint);
  }
}
