/**
 * A doubly linked list of short-lived members on long-lived owners: the open calls of a
 * connection, the streams waiting for identity changes, the pending deadlines of a wheel slot.
 * (Named `NodeList` before; "entry" is a machine everywhere else in Sigil, so each member here is
 * a list *entry*.)
 *
 * Why not a Set: V8 reallocates a Set's backing table as members are added and deleted (it grows
 * and shrinks around the few members a connection has). On a Set that lives for the whole
 * connection, each new table is referenced from the old generation, survives the young
 * generation's collections and is promoted, only to die soon after; at a thousand calls a second
 * that churn was a large share of what filled the old generation and brought on full
 * collections, which pause every call. Here each member's entry is allocated with it and dies with
 * it; the list itself never reallocates.
 */
export interface ListEntry<T> {
  readonly value: T;
  /** @internal */ prev: ListEntry<T> | undefined;
  /** @internal */ next: ListEntry<T> | undefined;
  /** @internal */ linked: boolean;
}

export class LinkedList<T> {
  private head: ListEntry<T> | undefined;
  private tail: ListEntry<T> | undefined;
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** Append `value`; the returned entry removes it again. */
  add(value: T): ListEntry<T> {
    const entry: ListEntry<T> = { value, prev: this.tail, next: undefined, linked: true };
    if (this.tail) this.tail.next = entry;
    else this.head = entry;
    this.tail = entry;
    this.count++;
    return entry;
  }

  /** Unlink `entry` (an entry of this list); removing it twice does nothing. */
  remove(entry: ListEntry<T>): void {
    if (!entry.linked) return;
    entry.linked = false;
    if (entry.prev) entry.prev.next = entry.next;
    else this.head = entry.next;
    if (entry.next) entry.next.prev = entry.prev;
    else this.tail = entry.prev;
    entry.prev = undefined;
    entry.next = undefined;
    this.count--;
  }

  /** The members now, in insertion order (a copy: callers may remove members while using it). */
  values(): T[] {
    const out: T[] = [];
    for (let n = this.head; n; n = n.next) out.push(n.value);
    return out;
  }

  /** The entries now, in insertion order (a copy, like values()). */
  entries(): ListEntry<T>[] {
    const out: ListEntry<T>[] = [];
    for (let n = this.head; n; n = n.next) out.push(n);
    return out;
  }
}
