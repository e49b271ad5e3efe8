/**
 * The executable hash cache: file identity (device, inode, size, mtime, ctime) → hex SHA-256, at
 * most `max` entries, in which one uid cannot push out the others' entries.
 *
 * Each entry is charged to the uid whose attestation hashed it, and is marked shared once a caller
 * of another uid uses it. A uid other than 0 holds at most `perUid` entries: past that its own
 * least recently used entry goes. When the cache is full, an entry of the uid holding the most goes.
 * Either way, a uid's entries that only it used go before its shared ones, least recently used
 * first. So a uid cycling through new files (each `touch` is a new identity) only ever replaces its
 * own entries once it holds `perUid`, takes at most `perUid` places from the others in all, and
 * binaries that several uids run stay cached longest. Root is limited only by the size (its
 * services are the ones an agent most needs to answer quickly, and root can stop the agent anyway).
 */

interface Entry {
  hex: string;
  owner: number;
  shared: boolean;
}

export class ExeHashCache {
  /** Entries, least recently used first. */
  private readonly map = new Map<string, Entry>();
  /** Entries per owner. */
  private readonly held = new Map<number, number>();
  /** The most recently used key (moving it to the back again would change nothing). */
  private newest: string | undefined;

  constructor(
    readonly max: number,
    readonly perUid: number,
  ) {}

  get size(): number {
    return this.map.size;
  }

  /** Entries charged to `uid` (tests, diagnostics). */
  heldBy(uid: number): number {
    return this.held.get(uid) ?? 0;
  }

  /** The hash of `key` for a caller of `uid`, which now counts as a user of it. */
  get(key: string, uid: number): string | undefined {
    const e = this.map.get(key);
    if (e === undefined) return undefined;
    if (e.owner !== uid) e.shared = true;
    // Move a hit to the back, unless it is there already: the common case (many callers of one
    // program) then leaves the long-lived map alone instead of reallocating it on every call.
    if (key !== this.newest) {
      this.map.delete(key);
      this.map.set(key, e);
      this.newest = key;
    }
    return e.hex;
  }

  /** Store the hash of `key`, hashed for `owner`; `shared` when callers of other uids waited for it too. */
  set(key: string, hex: string, owner: number, shared: boolean): void {
    const old = this.map.get(key);
    if (old !== undefined) this.drop(key, old);
    this.map.set(key, { hex, owner, shared });
    this.held.set(owner, (this.held.get(owner) ?? 0) + 1);
    this.newest = key;
    if (owner !== 0 && this.heldBy(owner) > this.perUid) this.evictOf(owner);
    while (this.map.size > this.max) this.evictOf(this.largestHolder());
  }

  private drop(key: string, e: Entry): void {
    this.map.delete(key);
    const n = (this.held.get(e.owner) ?? 1) - 1;
    if (n > 0) this.held.set(e.owner, n);
    else this.held.delete(e.owner);
    if (key === this.newest) this.newest = undefined;
  }

  /** Drop `uid`'s least recently used entry, one only it used if it has any. */
  private evictOf(uid: number): void {
    let fallback: string | undefined;
    for (const [k, e] of this.map) {
      if (e.owner !== uid) continue;
      if (!e.shared) {
        this.drop(k, e);
        return;
      }
      fallback ??= k;
    }
    if (fallback !== undefined) this.drop(fallback, this.map.get(fallback)!);
  }

  private largestHolder(): number {
    let best = -1;
    let most = -1;
    for (const [uid, n] of this.held) {
      if (n > most) {
        best = uid;
        most = n;
      }
    }
    return best;
  }
}
