/**
 * Plugin loader (DESIGN §2): built-ins by name, third-party plugins by module specifier or path.
 *
 * A config block maps attestor name → plugin config, e.g. `nodeAttestors: { tpm: {…} }`. A name is
 * looked up first in `plugins` (name → module specifier, from the config file), then in the
 * catalog of built-ins the caller passes in (the composition root, src/catalog.ts — this module
 * imports no attestor). Every plugin's config is validated against its JSON Schema before anything
 * starts (`<namespace>.config_invalid`, naming the plugin and the key). Third-party modules are
 * found only where src/plugins/resolve.ts says, and their errors cross src/plugins/error-boundary.ts.
 */
import { pathToFileURL } from 'node:url';
import { SigilError, errorMessage } from '../errors.js';
import { fromPlugin, guardAgent, guardVerifier, guardWorkload } from './error-boundary.js';
import { resolvePluginModule } from './resolve.js';
import { validatePluginConfig } from './validate.js';
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

export type PluginKind = 'nodeAttestorVerifier' | 'nodeAttestorAgent' | 'workloadAttestor';
type Kind = PluginKind;
type PluginOf<K extends Kind> = NonNullable<PluginModule[K]>;

const NAME_RE = /^[a-z][a-z0-9_]{0,63}$/;

/**
 * The first segments of Sigil's own error codes (docs/errors.md). A third-party plugin's error
 * namespace is its name, so a plugin named after one of these (or after a built-in's namespace
 * that differs from the built-in's name, such as `sev` or `nitro`) would speak as Sigil: it is
 * refused with `plugin.reserved_name`, unless it replaces the built-in of that very name and kind.
 */
export const SIGIL_ERROR_AREAS: ReadonlySet<string> = new Set([
  'admin', 'agent', 'attest', 'bundle', 'ca', 'cli', 'config', 'container', 'csr', 'entries', 'entry', 'federation', 'grpc', 'http',
  'input', 'internal', 'io', 'join_token', 'jwtsvid', 'keys', 'native', 'nitro', 'pem', 'plugin', 'selector', 'sev', 'sigil', 'spiffe',
  'store', 'svid', 'tdx', 'token', 'tpm', 'unix', 'verifier', 'workload', 'workload_api', 'workload_client', 'x509', 'x509svid',
]);

function reservedName(catalog: BuiltinCatalog, kind: Kind, name: string): boolean {
  if (Object.prototype.hasOwnProperty.call(catalog[kind], name)) return false; // replaces that built-in
  if (SIGIL_ERROR_AREAS.has(name)) return true;
  for (const k of Object.keys(catalog) as Kind[]) {
    for (const b of Object.values(catalog[k] as Readonly<Record<string, BuiltinPlugin<Kind>>>)) if (b.errorNamespace === name) return true;
  }
  return false;
}

/** One built-in plugin: how to import it (lazily, so e.g. the TPM native addon loads only when configured) and its error-code namespace. */
export interface BuiltinPlugin<K extends Kind> {
  load: () => Promise<PluginOf<K>>;
  /** First segment of the plugin's error codes (`tpm`, `nitro`, `sev`, …); its config errors are `<namespace>.config_invalid`. */
  errorNamespace: string;
}

/** The built-ins a host offers, per kind (see src/catalog.ts). */
export type BuiltinCatalog = { [K in Kind]: Readonly<Record<string, BuiltinPlugin<K>>> };

/** Where third-party plugins come from: name → npm package name or file path (relative to configDir). */
export type PluginSources = Record<string, string>;

/** A resolved plugin: its module object, whether it came from outside Sigil, and its error namespace. */
export interface ResolvedPluginOf<K extends Kind> {
  plugin: PluginOf<K>;
  thirdParty: boolean;
  errorNamespace: string;
}

async function importThirdParty(name: string, spec: string, configDir: string): Promise<PluginModule> {
  const { file } = resolvePluginModule(name, spec, configDir);
  let mod: Record<string, unknown>;
  try {
    mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (e) {
    throw new SigilError('plugin.load_failed', `plugin "${name}": cannot load module "${spec}" (${file}): ${errorMessage(e)}`, { cause: e });
  }
  return (mod.default ?? mod.plugin ?? mod) as PluginModule;
}

function checkShape(kind: Kind, name: string, p: unknown): void {
  // Each member is read once, here: a getter that throws (whatever it throws, a SigilError with a
  // foreign code included) makes the module unusable, and is reported as such.
  let create: unknown;
  let configSchema: unknown;
  let pluginName: unknown;
  const isObject = typeof p === 'object' && p !== null;
  if (isObject) {
    try {
      const o = p as Record<string, unknown>;
      create = o.create;
      configSchema = o.configSchema;
      pluginName = o.name;
    } catch (e) {
      throw new SigilError('plugin.bad_module', `plugin "${name}": its ${kind} cannot be read: ${errorMessage(e)}`, { cause: e });
    }
  }
  if (!isObject || typeof create !== 'function' || typeof configSchema !== 'object' || configSchema === null) {
    throw new SigilError('plugin.bad_module', `plugin "${name}": module does not export a valid ${kind} (needs name, configSchema and create())`);
  }
  if (pluginName !== name) {
    throw new SigilError('plugin.name_mismatch', `plugin "${name}": module's ${kind} is named "${String(pluginName)}"`);
  }
}

/** Resolve plugin `name` of `kind`: from `sources` (third-party) or the catalog's built-ins. */
export async function resolvePluginEntry<K extends Kind>(catalog: BuiltinCatalog, kind: K, name: string, sources: PluginSources, configDir: string): Promise<ResolvedPluginOf<K>> {
  if (!NAME_RE.test(name)) {
    throw new SigilError('plugin.bad_name', `plugin "${name}": names are lowercase letters, digits and _ (start with a letter)`);
  }
  const spec = Object.prototype.hasOwnProperty.call(sources, name) ? sources[name] : undefined;
  if (spec !== undefined) {
    if (reservedName(catalog, kind, name)) {
      throw new SigilError(
        'plugin.reserved_name',
        `plugin "${name}": a third-party plugin's error codes are "<its name>.*", and "${name}.*" are Sigil's own or a built-in's codes; give the plugin another name`,
      );
    }
    const mod = await importThirdParty(name, spec, configDir);
    let plugin: unknown;
    try {
      plugin = (mod as Record<string, unknown> | null | undefined)?.[kind];
    } catch (e) {
      throw new SigilError('plugin.bad_module', `plugin "${name}": module "${spec}" cannot be read: ${errorMessage(e)}`, { cause: e });
    }
    if (plugin === undefined) {
      throw new SigilError('plugin.bad_module', `plugin "${name}": module "${spec}" exports no ${kind}`);
    }
    checkShape(kind, name, plugin);
    return { plugin: plugin as PluginOf<K>, thirdParty: true, errorNamespace: name };
  }
  const builtin = (catalog[kind] as Readonly<Record<string, BuiltinPlugin<K>>>)[name];
  if (!builtin || !Object.prototype.hasOwnProperty.call(catalog[kind], name)) {
    const known = Object.keys(catalog[kind]).join(', ');
    throw new SigilError('plugin.unknown', `plugin "${name}": no built-in ${kind} of that name (built-ins: ${known}); third-party plugins are listed under "plugins"`);
  }
  let plugin: unknown;
  try {
    plugin = await builtin.load();
  } catch (e) {
    throw new SigilError('plugin.load_failed', `plugin "${name}": cannot load built-in: ${errorMessage(e)}`, { cause: e });
  }
  checkShape(kind, name, plugin);
  return { plugin: plugin as PluginOf<K>, thirdParty: false, errorNamespace: builtin.errorNamespace };
}

/** The plugin object alone (see resolvePluginEntry). */
export async function resolvePlugin<K extends Kind>(catalog: BuiltinCatalog, kind: K, name: string, sources: PluginSources, configDir: string): Promise<PluginOf<K>> {
  return (await resolvePluginEntry(catalog, kind, name, sources, configDir)).plugin;
}

function configBlocks(blocks: unknown, what: string): [string, unknown][] {
  if (blocks === undefined || blocks === null) return [];
  if (typeof blocks !== 'object' || Array.isArray(blocks)) {
    throw new SigilError('config.invalid', `${what} must be a map of plugin name → config block`);
  }
  return Object.entries(blocks as Record<string, unknown>).map(([k, v]) => [k, v ?? {}]);
}

async function loadAll<K extends Kind, T>(
  catalog: BuiltinCatalog,
  kind: K,
  blocks: unknown,
  what: string,
  sources: PluginSources,
  configDir: string,
  make: (plugin: PluginOf<K>, config: unknown, isolate: boolean) => Promise<T> | T,
  guard: (name: string, made: T) => T,
): Promise<Map<string, T>> {
  const out = new Map<string, T>();
  const entries = configBlocks(blocks, what);
  // Resolve and validate every plugin first, so a bad config fails before anything starts.
  const resolved: [string, ResolvedPluginOf<K>, unknown][] = [];
  for (const [name, cfg] of entries) {
    const r = await resolvePluginEntry(catalog, kind, name, sources, configDir);
    const config = validatePluginConfig(r.plugin.configSchema, cfg, { namespace: r.errorNamespace, what: `plugin "${name}" config (${what}.${name})` });
    resolved.push([name, r, config]);
  }
  for (const [name, r, config] of resolved) {
    try {
      const made = await make(r.plugin, config, r.thirdParty);
      out.set(name, r.thirdParty ? guard(name, made) : made);
    } catch (e0) {
      const e = r.thirdParty ? fromPlugin(e0, name) : e0;
      if (e instanceof SigilError) throw e;
      throw new SigilError('plugin.init_failed', `plugin "${name}": ${errorMessage(e)}`, { cause: e });
    }
  }
  return out;
}

/**
 * What a third-party plugin is given: its own copy of the host's deps (and of `services`), with a
 * child logger, so that assigning to them (`deps.dataDir = …`, `deps.services.consumeJoinToken = …`,
 * `deps.logger.level = …`) changes nothing another plugin or the host sees.
 */
function ownVerifierDeps(d: VerifierPluginDeps, name: string): VerifierPluginDeps {
  return { ...d, logger: d.logger.child({ plugin: name }), ...(d.services ? { services: { ...d.services } } : {}) };
}

function ownAgentDeps(d: AgentPluginDeps, name: string): AgentPluginDeps {
  return { ...d, logger: d.logger.child({ plugin: name }) };
}

export function loadNodeAttestorVerifiers(
  catalog: BuiltinCatalog,
  blocks: unknown,
  deps: (name: string) => VerifierPluginDeps,
  sources: PluginSources = {},
  configDir = process.cwd(),
): Promise<Map<string, NodeAttestorVerifier>> {
  return loadAll(catalog, 'nodeAttestorVerifier', blocks, 'nodeAttestors', sources, configDir, (p: NodeAttestorVerifierPlugin, c, isolate) => p.create(c, isolate ? ownVerifierDeps(deps(p.name), p.name) : deps(p.name)), guardVerifier);
}

export function loadNodeAttestorAgents(
  catalog: BuiltinCatalog,
  blocks: unknown,
  deps: AgentPluginDeps,
  sources: PluginSources = {},
): Promise<Map<string, NodeAttestorAgent>> {
  return loadAll(catalog, 'nodeAttestorAgent', blocks, 'nodeAttestors', sources, deps.configDir, (p: NodeAttestorAgentPlugin, c, isolate) => p.create(c, isolate ? ownAgentDeps(deps, p.name) : deps), guardAgent);
}

export function loadWorkloadAttestors(
  catalog: BuiltinCatalog,
  blocks: unknown,
  deps: AgentPluginDeps,
  sources: PluginSources = {},
): Promise<Map<string, WorkloadAttestor>> {
  return loadAll(catalog, 'workloadAttestor', blocks, 'workloadAttestors', sources, deps.configDir, (p: WorkloadAttestorPlugin, c, isolate) => p.create(c, isolate ? ownAgentDeps(deps, p.name) : deps), guardWorkload);
}
