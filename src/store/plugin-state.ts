/**
 * Plugin state rules shared by the SQLite and PostgreSQL stores: what a value is stored as, how a
 * compare-and-set compares, and which keys an agent's eviction removes. Only the SQL differs.
 */
import { SigilError } from '../errors.js';
import { parseStoredJson } from './rows.js';
import type { PluginStateKey } from './types.js';

/** The stored text of a plugin state value; refuses what JSON cannot represent (`store.invalid_value`). */
export function pluginStateText(value: unknown): string {
  const text = JSON.stringify(value) as string | undefined;
  if (text === undefined) throw new SigilError('store.invalid_value', 'plugin state value is not JSON-serialisable', { status: 400 });
  return text;
}

/**
 * The stored text a compare-and-set compares with, or undefined when `expected` is not a JSON value
 * (then nothing stored can equal it and the swap fails).
 */
export function pluginStateExpectedText(expected: unknown): string | undefined {
  return JSON.stringify(expected) as string | undefined;
}

/** A stored plugin state value; text that is not JSON is `store.corrupt`. */
export function pluginStateValue(text: string, plugin: string, key: string): unknown {
  return parseStoredJson<unknown>(text, `plugin state ${plugin}/${key}`);
}

/**
 * The plugin state keys an eviction removes, each once: the keys `pluginState` names for every
 * factor ID of every agent record hit, and (without a ban) for `id` itself even when no record is
 * or names it.
 */
export function evictedPluginStateKeys(
  hits: readonly { factorIds: readonly string[] }[],
  id: string,
  ban: boolean,
  pluginState: (agentId: string) => PluginStateKey[],
): PluginStateKey[] {
  const out: PluginStateKey[] = [];
  const seen = new Set<string>();
  for (const fid of new Set([...hits.flatMap((h) => h.factorIds), ...(ban ? [] : [id])])) {
    for (const k of pluginState(fid)) {
      const tag = JSON.stringify([k.plugin, k.key]);
      if (seen.has(tag)) continue;
      seen.add(tag);
      out.push(k);
    }
  }
  return out;
}
