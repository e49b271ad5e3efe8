/**
 * Plugin loader (DESIGN §2): built-ins by name, third-party plugins by module specifier or path.
 *
 * A config block maps attestor name → plugin config, e.g. `nodeAttestors: { tpm: {…} }`. A name is
 * looked up first in `plugins` (name → module specifier, from the config file), then among the
 * built-ins. Every plugin's config is validated against its JSON Schema before anything starts;
 * errors name the plugin and the key.
 */
import { createRequire } from 'node:module';
import { isAbsolute, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { SigilError } from '../errors.js';
import { validateAgainstSchema } from './validate.js';
import type {
  AgentPluginDeps,
  NodeAttestorAgent,
  NodeAttestorAgentPlugin,
  NodeAttestorVerifier,
  NodeAttestorVerifierPlugin,
  PluginModule,
  VerifierPluginDeps,
  WorkloadAttestor,
  WorkloadAttestorPlugin,
} from './types.js';

type Kind = 'nodeAttestorVerifier' | 'nodeAttestorAgent' | 'workloadAttestor';
type PluginOf<K extends Kind> = NonNullable<PluginModule[K]>;

const NAME_RE = /^[a-z][a-z0-9_]{0,63}$/;

/** Built-in plugins, imported lazily so that e.g. the TPM binding is only loaded when configured. */
const BUILTINS: { [K in Kind]: Record<string, () => Promise<PluginOf<K>>> } = {
  nodeAttestorVerifier: {
    join_token: async () => (await import('./join-token.js')).joinTokenVerifierPlugin,
    tpm: async () => (await import('../tpm/plugin.js')).tpmVerifierPlugin,
    aws_nitro: async () => (await import('../nitro/plugin.js')).nitroVerifierPlugin,
    sev_snp: async () => (await import('../sev/plugin.js')).sevVerifierPlugin,
  },
  nodeAttestorAgent: {
    join_token: async () => (await import('./join-token.js')).joinTokenAgentPlugin,
    tpm: async () => (await import('../tpm/plugin.js')).tpmAgentPlugin,
    aws_nitro: async () => (await import('../nitro/plugin.js')).nitroAgentPlugin,
    sev_snp: async () => (await import('../sev/plugin.js')).sevAgentPlugin,
  },
  workloadAttestor: {
    unix: async () => (await import('../workload/unix.js')).unixAttestorPlugin,
    container: async () => (await import('../workload/container.js')).containerAttestorPlugin,
  },
};

export function builtinNames(kind: Kind): string[] {
  return Object.keys(BUILTINS[kind]);
}

/** Where third-party plugins come from: name → npm package name or file path (relative to configDir). */
export type PluginSources = Record<string, string>;

async function importThirdParty(spec: string, configDir: string): Promise<PluginModule> {
  let url: string;
  if (spec.startsWith('.') || isAbsolute(spec)) {
    url = pathToFileURL(resolve(configDir, spec)).href;
  } else {
    try {
      url = pathToFileURL(createRequire(resolve(configDir, 'sigil-config.js')).resolve(spec)).href;
    } catch {
      url = spec; // let Node resolve it from Sigil's own node_modules
    }
  }
  const mod = (await import(url)) as Record<string, unknown>;
  const candidate = (mod.default ?? mod.plugin ?? mod) as PluginModule;
  return candidate;
}

function checkShape(kind: Kind, name: string, p: unknown): void {
  const o = p as Record<string, unknown> | undefined;
  const method = kind === 'workloadAttestor' || kind === 'nodeAttestorVerifier' || kind === 'nodeAttestorAgent' ? 'create' : '';
  if (!o || typeof o !== 'object' || typeof o[method] !== 'function' || typeof o.configSchema !== 'object' || o.configSchema === null) {
    throw new SigilError('plugin.bad_module', `plugin "${name}": module does not export a valid ${kind} (needs name, configSchema and create())`);
  }
  if (o.name !== name) {
    throw new SigilError('plugin.name_mismatch', `plugin "${name}": module's ${kind} is named "${String(o.name)}"`);
  }
}

export async function resolvePlugin<K extends Kind>(kind: K, name: string, sources: PluginSources, configDir: string): Promise<PluginOf<K>> {
  if (!NAME_RE.test(name)) {
    throw new SigilError('plugin.bad_name', `plugin "${name}": names are lowercase letters, digits and _ (start with a letter)`);
  }
  const spec = sources[name];
  let plugin: unknown;
  if (spec !== undefined) {
    let mod: PluginModule;
    try {
      mod = await importThirdParty(spec, configDir);
    } catch (e) {
      throw new SigilError('plugin.load_failed', `plugin "${name}": cannot load module "${spec}": ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
    plugin = mod[kind];
    if (plugin === undefined) {
      throw new SigilError('plugin.bad_module', `plugin "${name}": module "${spec}" exports no ${kind}`);
    }
  } else {
    const builtin = BUILTINS[kind][name];
    if (!builtin) {
      const known = Object.keys(BUILTINS[kind]).join(', ');
      throw new SigilError('plugin.unknown', `plugin "${name}": no built-in ${kind} of that name (built-ins: ${known}); third-party plugins are listed under "plugins"`);
    }
    try {
      plugin = await builtin();
    } catch (e) {
      throw new SigilError('plugin.load_failed', `plugin "${name}": cannot load built-in: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
  }
  checkShape(kind, name, plugin);
  return plugin as PluginOf<K>;
}

function configBlocks(blocks: unknown, what: string): [string, unknown][] {
  if (blocks === undefined || blocks === null) return [];
  if (typeof blocks !== 'object' || Array.isArray(blocks)) {
    throw new SigilError('config.invalid', `${what} must be a map of plugin name → config block`);
  }
  return Object.entries(blocks as Record<string, unknown>).map(([k, v]) => [k, v ?? {}]);
}

async function loadAll<K extends Kind, T>(
  kind: K,
  blocks: unknown,
  what: string,
  sources: PluginSources,
  configDir: string,
  make: (plugin: PluginOf<K>, config: unknown) => Promise<T> | T,
): Promise<Map<string, T>> {
  const out = new Map<string, T>();
  const entries = configBlocks(blocks, what);
  // Resolve and validate every plugin first, so a bad config fails before anything starts.
  const resolved: [string, PluginOf<K>, unknown][] = [];
  for (const [name, cfg] of entries) {
    const plugin = await resolvePlugin(kind, name, sources, configDir);
    const config = validateAgainstSchema(plugin.configSchema, structuredClone(cfg), `plugin "${name}" config (${what}.${name})`, 'plugin.config_invalid');
    resolved.push([name, plugin, config]);
  }
  for (const [name, plugin, config] of resolved) {
    try {
      out.set(name, await make(plugin, config));
    } catch (e) {
      if (e instanceof SigilError) throw e;
      throw new SigilError('plugin.init_failed', `plugin "${name}": ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    }
  }
  return out;
}

export function loadNodeAttestorVerifiers(
  blocks: unknown,
  deps: (name: string) => VerifierPluginDeps,
  sources: PluginSources = {},
  configDir = process.cwd(),
): Promise<Map<string, NodeAttestorVerifier>> {
  return loadAll('nodeAttestorVerifier', blocks, 'nodeAttestors', sources, configDir, (p: NodeAttestorVerifierPlugin, c) => p.create(c, deps(p.name)));
}

export function loadNodeAttestorAgents(
  blocks: unknown,
  deps: AgentPluginDeps,
  sources: PluginSources = {},
): Promise<Map<string, NodeAttestorAgent>> {
  return loadAll('nodeAttestorAgent', blocks, 'nodeAttestors', sources, deps.configDir, (p: NodeAttestorAgentPlugin, c) => p.create(c, deps));
}

export function loadWorkloadAttestors(
  blocks: unknown,
  deps: AgentPluginDeps,
  sources: PluginSources = {},
): Promise<Map<string, WorkloadAttestor>> {
  return loadAll('workloadAttestor', blocks, 'workloadAttestors', sources, deps.configDir, (p: WorkloadAttestorPlugin, c) => p.create(c, deps));
}
