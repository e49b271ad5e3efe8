/**
 * The one in-memory PluginStateStore the TPM tests share. Values are kept as deep copies, and
 * compareAndSet compares JSON text the way the datastores do (src/store/*: `value = $expected`
 * on the stored JSON), so a plugin that passes back anything but what `get` returned fails here
 * as it would against SQLite or PostgreSQL.
 */
import type { PluginStateStore } from '../../src/plugins/types.js';

export class MemoryState implements PluginStateStore {
  /** Stored values (parsed copies), readable by tests. */
  readonly m = new Map<string, unknown>();

  async get(k: string): Promise<unknown> {
    const v = this.m.get(k);
    return v === undefined ? undefined : (JSON.parse(JSON.stringify(v)) as unknown);
  }

  async put(k: string, v: unknown): Promise<void> {
    this.m.set(k, JSON.parse(JSON.stringify(v)));
  }

  async compareAndSet(k: string, expected: unknown, next: unknown): Promise<boolean> {
    const cur = this.m.get(k);
    const matches = expected === undefined ? cur === undefined : cur !== undefined && JSON.stringify(cur) === JSON.stringify(expected);
    if (!matches) return false;
    this.m.set(k, JSON.parse(JSON.stringify(next)));
    return true;
  }
}
