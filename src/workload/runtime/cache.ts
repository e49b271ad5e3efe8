/**
 * Bounded cache of runtime answers per container ID. A container's image and labels do not
 * change while it lives, and its ID is never reused, so an answer stays good for the container's
 * life; entries still expire after `ttlMs` (so a runtime's relabelling is seen eventually and
 * removed containers leave), the least recently used goes first when the bound is reached, and
 * `forget` drops an entry at once (called when a lookup says the container is gone).
 * Concurrent lookups of one ID share one request.
 */
export class RuntimeCache<T> {
  private readonly entries = new Map<string, { value: T; until: number }>();
  private readonly inflight = new Map<string, Promise<T>>();

  constructor(
    private readonly maxEntries: number,
    private readonly ttlMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** The cached value, refreshing its place in the LRU order, or undefined. */
  peek(key: string): T | undefined {
    const e = this.entries.get(key);
    if (e === undefined) return undefined;
    if (e.until <= this.now()) {
      this.entries.delete(key);
      return undefined;
    }
    this.entries.delete(key);
    this.entries.set(key, e);
    return e.value;
  }

  /** The cached value, or the result of `load` (shared with concurrent callers for the same key). */
  async get(key: string, load: () => Promise<T>): Promise<T> {
    const hit = this.peek(key);
    if (hit !== undefined) return hit;
    const running = this.inflight.get(key);
    if (running !== undefined) return running;
    const p = load().then(
      (value) => {
        this.inflight.delete(key);
        this.set(key, value);
        return value;
      },
      (e: unknown) => {
        this.inflight.delete(key);
        throw e;
      },
    );
    this.inflight.set(key, p);
    return p;
  }

  set(key: string, value: T): void {
    this.entries.delete(key);
    this.entries.set(key, { value, until: this.now() + this.ttlMs });
    while (this.entries.size > this.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
    }
  }

  forget(key: string): void {
    this.entries.delete(key);
  }
}
