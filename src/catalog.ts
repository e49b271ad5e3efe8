/**
 * The composition root for plugins (as SPIRE's catalog, pkg/server/catalog): the one place that
 * knows which attestors are built in. Attestor folders never import it, and the loader
 * (src/plugins/loader.ts) imports no attestor; the verifier and the agent load their plugins
 * through the functions below. Each built-in is imported lazily, so e.g. the TPM native addon is
 * loaded only when a `tpm` block is configured.
 *
 * To add a built-in attestor: give it its own folder exporting its plugin halves, then add one line
 * per half here (name → import, and the first segment of its error codes).
 */
import {
  loadNodeAttestorAgents as loadAgents,
  loadNodeAttestorVerifiers as loadVerifiers,
  loadWorkloadAttestors as loadWorkload,
  resolvePlugin as resolveWith,
  type BuiltinCatalog,
  type PluginKind,
  type PluginSources,
} from './plugins/loader.js';
import type { AgentPluginDeps, NodeAttestorAgent, NodeAttestorVerifier, PluginModule, VerifierPluginDeps, WorkloadAttestor } from './plugins/types.js';

export const builtinPlugins: BuiltinCatalog = {
  nodeAttestorVerifier: {
    join_token: { errorNamespace: 'join_token', load: async () => (await import('./join-token/plugin.js')).joinTokenVerifierPlugin },
    tpm: { errorNamespace: 'tpm', load: async () => (await import('./tpm/plugin.js')).tpmVerifierPlugin },
    aws_nitro: { errorNamespace: 'nitro', load: async () => (await import('./nitro/plugin.js')).nitroVerifierPlugin },
    sev_snp: { errorNamespace: 'sev', load: async () => (await import('./sev/plugin.js')).sevVerifierPlugin },
    tdx: { errorNamespace: 'tdx', load: async () => (await import('./tdx/plugin.js')).tdxVerifierPlugin },
  },
  nodeAttestorAgent: {
    join_token: { errorNamespace: 'join_token', load: async () => (await import('./join-token/plugin.js')).joinTokenAgentPlugin },
    tpm: { errorNamespace: 'tpm', load: async () => (await import('./tpm/plugin.js')).tpmAgentPlugin },
    aws_nitro: { errorNamespace: 'nitro', load: async () => (await import('./nitro/plugin.js')).nitroAgentPlugin },
    sev_snp: { errorNamespace: 'sev', load: async () => (await import('./sev/plugin.js')).sevAgentPlugin },
    tdx: { errorNamespace: 'tdx', load: async () => (await import('./tdx/plugin.js')).tdxAgentPlugin },
  },
  workloadAttestor: {
    unix: { errorNamespace: 'unix', load: async () => (await import('./workload/unix.js')).unixAttestorPlugin },
    container: { errorNamespace: 'container', load: async () => (await import('./workload/container.js')).containerAttestorPlugin },
  },
};

/** Names of the built-ins of one kind. */
export function builtinNames(kind: PluginKind): string[] {
  return Object.keys(builtinPlugins[kind]);
}

/** The verifier halves named in `nodeAttestors`, built-in or from `plugins` (validated, then created). */
export function loadNodeAttestorVerifiers(
  blocks: unknown,
  deps: (name: string) => VerifierPluginDeps,
  sources: PluginSources = {},
  configDir = process.cwd(),
): Promise<Map<string, NodeAttestorVerifier>> {
  return loadVerifiers(builtinPlugins, blocks, deps, sources, configDir);
}

/** The agent halves named in `nodeAttestors`. */
export function loadNodeAttestorAgents(blocks: unknown, deps: AgentPluginDeps, sources: PluginSources = {}): Promise<Map<string, NodeAttestorAgent>> {
  return loadAgents(builtinPlugins, blocks, deps, sources);
}

/** The workload attestors named in `workloadAttestors`. */
export function loadWorkloadAttestors(blocks: unknown, deps: AgentPluginDeps, sources: PluginSources = {}): Promise<Map<string, WorkloadAttestor>> {
  return loadWorkload(builtinPlugins, blocks, deps, sources);
}

/** One plugin half by name, built-in or from `sources` (no config validation). */
export function resolvePlugin<K extends PluginKind>(kind: K, name: string, sources: PluginSources, configDir: string): Promise<NonNullable<PluginModule[K]>> {
  return resolveWith(builtinPlugins, kind, name, sources, configDir);
}
