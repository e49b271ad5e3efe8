/**
 * The Sigil library: SPIFFE primitives, every evidence verifier (usable offline, pure: bytes, trust
 * anchors and time in), and the plugin contracts for third-party attestors.
 *
 *   import { spiffe, tpm, nitro, sev, SigilError } from 'sigil';
 *
 * Plugin authors import from the plugin kit instead: `sigil/plugin` (contracts, SigilError, config
 * validation, session binding, base64) and `sigil/plugin/testing` (fakes and a session harness).
 */
export { SigilError, isSigilError } from './errors.js';
export type * from './plugins/types.js';
export { sessionBinding } from './plugins/binding.js';
export * as spiffe from './spiffe/index.js';
export * as tpm from './tpm/index.js';
export * as nitro from './nitro/index.js';
export * as sev from './sev/index.js';
