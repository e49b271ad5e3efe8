/**
 * The plugin kit (`import … from 'sigil/plugin'`): everything a third-party attestor needs from
 * Sigil, importable from outside Sigil's install (the plugin's own `node_modules/sigil`, see
 * "Plugins" in the README). Test fakes and a harness that drives both halves as the agent and the
 * verifier do are in `sigil/plugin/testing`.
 *
 * - the contracts (types): NodeAttestorVerifierPlugin, NodeAttestorAgentPlugin, WorkloadAttestorPlugin, …;
 * - `SigilError` and `pluginErrors(name)`: codes `<plugin name>.<reason>` reach the agent unchanged;
 *   a code outside the plugin's namespace becomes `plugin.code_outside_namespace`;
 * - `validatePluginConfig` / `pluginConfigError`: the validation the loader runs (`<name>.config_invalid`);
 * - `sessionBinding`: the value evidence must be bound to;
 * - `checkAttestorResult`: the verifier's own checks of what `finish` returns (selectors, status,
 *   agent ID), with the verifier's codes;
 * - `decodeBase64`: strict, bounded base64 for payload fields.
 */
import { SigilError } from '../errors.js';
import { inNamespace } from '../plugins/error-boundary.js';
import type { PluginModule } from '../plugins/types.js';

export type * from '../plugins/types.js';
export { SigilError, isSigilError } from '../errors.js';
export { sessionBinding } from '../plugins/binding.js';
export { decodeBase64, type Base64Options } from '../plugins/base64.js';
export { validatePluginConfig, pluginConfigError } from '../plugins/validate.js';
export { inNamespace } from '../plugins/error-boundary.js';
export { checkAttestorResult } from '../plugins/result.js';

/**
 * Errors in plugin `name`'s namespace: `const fail = pluginErrors('x'); throw fail('bad_mac', 'MAC does not verify')`
 * throws SigilError `x.bad_mac` (HTTP 400 unless `status` says otherwise; the verifier answers 401 for 400).
 */
export function pluginErrors(name: string): (reason: string, message: string, opts?: { status?: number; details?: Record<string, unknown>; cause?: unknown }) => SigilError {
  return (reason, message, opts = {}) => {
    const code = `${name}.${reason}`;
    if (!inNamespace(code, name)) throw new TypeError(`"${code}" is not a valid error code (reasons are snake_case, dot-separated)`);
    return new SigilError(code, message, opts);
  };
}

/**
 * Type-checks a plugin module and checks that every half it exports carries the same name; returns
 * it unchanged (use as `export default definePlugin({ … })`).
 */
export function definePlugin<M extends PluginModule>(module: M): M {
  const names = [module.nodeAttestorVerifier?.name, module.nodeAttestorAgent?.name, module.workloadAttestor?.name].filter((n) => n !== undefined);
  if (names.length === 0) throw new TypeError('a plugin module exports at least one of nodeAttestorVerifier, nodeAttestorAgent, workloadAttestor');
  if (new Set(names).size !== 1) throw new TypeError(`the halves of one plugin must share a name (got ${names.join(', ')})`);
  return module;
}
