/**
 * The in-memory PluginStateStore of the TPM benches: values kept as given (no copies, so the
 * store costs next to nothing next to the verifier work measured), and compareAndSet comparing
 * JSON text as the datastores do.
 */
import type { PluginStateStore } from '../../src/plugins/types.js';

export class MemoryState implements PluginStateStore {
  private readonly m = new Map<string, unknown>();
  async get(k: string): Promise<unknown> {
    return this.m.get(k);
  }
  async put(k: string, v: unknown): Promise<void> {
    this.m.set(k, v);
  }
  async compareAndSet(k: string, expected: unknown, next: unknown): Promise<boolean> {
    const cur = this.m.get(k);
    if (expected === undefined ? cur !== undefined : cur === undefined || JSON.stringify(cur) !== JSON.stringify(expected)) return false;
    this.m.set(k, next);
    return true;
  }
}
