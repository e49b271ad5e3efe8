/**
 * A doubly linked list for members that come and go all the time on long-lived owners (the open
 * calls of a connection, the streams waiting for identity changes).
 *
 * Why not a Set: V8 reallocates a Set's backing table as members are added and deleted (it grows
 * and shrinks around the few members a connection has). On a Set that lives for the whole
 * connection, each new table is referenced from the old generation, survives the young
 * generation's collections and is promoted, only to die soon after; at a thousand calls a second
 * that churn was a large share of what filled the old generation and brought on full
 * collections, which pause every call. Here each member's node is allocated with it and dies with
 * it; the list itself never reallocates.
 */
export interface ListNode<T> {
  readonly value: T;
  /** @internal */ prev: ListNode<T> | undefined;
  /** @internal */ next: ListNode<T> | undefined;
  /** @internal */ linked: boolean;
}

export class NodeList<T> {
  private head: ListNode<T> | undefined;
  private tail: ListNode<T> | undefined;
  private count = 0;

  get size(): number {
    return this.count;
  }

  /** Append `value`; the returned node removes it again. */
  add(value: T): ListNode<T> {
    const node: ListNode<T> = { value, prev: this.tail, next: undefined, linked: true };
    if (this.tail) this.tail.next = node;
    else this.head = node;
    this.tail = node;
    this.count++;
    return node;
  }

  /** Unlink `node` (a node of this list); removing it twice does nothing. */
  remove(node: ListNode<T>): void {
    if (!node.linked) return;
    node.linked = false;
    if (node.prev) node.prev.next = node.next;
    else this.head = node.next;
    if (node.next) node.next.prev = node.prev;
    else this.tail = node.prev;
    node.prev = undefined;
    node.next = undefined;
    this.count--;
  }

  /** The members now, in insertion order (a copy: callers may remove members while using it). */
  values(): T[] {
    const out: T[] = [];
    for (let n = this.head; n; n = n.next) out.push(n.value);
    return out;
  }

  /** The nodes now, in insertion order (a copy, like values()). */
  nodes(): ListNode<T>[] {
    const out: ListNode<T>[] = [];
    for (let n = this.head; n; n = n.next) out.push(n);
    return out;
  }
}
