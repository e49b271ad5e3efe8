/**
 * The checks the verifier makes on what a node attestor's `finish` returned (DESIGN §3–4), shared by
 * the verifier (src/verifier/attestation.ts) and the plugin kit's harness (sigil/plugin/testing).
 */
import { SigilError } from '../errors.js';
import { SpiffeId } from '../spiffe/id.js';
import type { AttestorResult } from './types.js';

/**
 * At most this many selectors per attestor result. Evidence can name many facts (a forged event log
 * can carry thousands of records); they are kept in the agent's record and matched on every sync,
 * so the count is bounded. Real nodes yield a few dozen to a few hundred.
 */
export const MAX_ATTESTOR_SELECTORS = 1024;
/** At most this many characters per selector: as for an entry's selectors, so a longer one could never match. */
export const MAX_ATTESTOR_SELECTOR_LEN = 1024;

/**
 * Throws `attest.bad_selector` (HTTP 500) unless every selector is a string `<name>:…` of at most
 * MAX_ATTESTOR_SELECTOR_LEN characters, and `attest.too_many_selectors` (HTTP 400: the evidence
 * decides the count) when there are more than MAX_ATTESTOR_SELECTORS.
 */
export function checkSelectors(name: string, r: AttestorResult): void {
  if (typeof r !== 'object' || r === null || !Array.isArray(r.selectors)) {
    throw new SigilError('attest.bad_selector', `attestor "${name}" returned no selector list`, { status: 500 });
  }
  if (r.selectors.length > MAX_ATTESTOR_SELECTORS) {
    throw new SigilError('attest.too_many_selectors', `attestor "${name}" produced ${r.selectors.length} selectors, more than the ${MAX_ATTESTOR_SELECTORS} a node may have`);
  }
  for (const sel of r.selectors as unknown[]) {
    if (typeof sel !== 'string' || !sel.startsWith(`${name}:`)) {
      throw new SigilError('attest.bad_selector', `attestor "${name}" produced selector "${String(sel).slice(0, 80)}" outside its own type`, { status: 500 });
    }
    if (sel.length > MAX_ATTESTOR_SELECTOR_LEN) {
      throw new SigilError('attest.bad_selector', `attestor "${name}" produced a selector of ${sel.length} characters ("${sel.slice(0, 80)}…"), more than ${MAX_ATTESTOR_SELECTOR_LEN}`, { status: 500 });
    }
  }
}

/** `spiffe://<trustDomain>/sigil/agent/<name>/<suffix>`, or `attest.bad_agent_id` (HTTP 500) when that is no valid SPIFFE ID. */
export function agentIdFor(trustDomain: string, name: string, suffix: unknown): SpiffeId {
  try {
    return SpiffeId.fromPath(trustDomain, `/sigil/agent/${name}/${String(suffix)}`);
  } catch (e) {
    throw new SigilError('attest.bad_agent_id', `attestor "${name}" produced an agent ID suffix that is not a valid SPIFFE path: ${(e as Error).message}`, { status: 500 });
  }
}

/**
 * The status a factor gives its evidence: "affirming" (or none) and "warning" pass. Plugins are
 * JavaScript, so their result is not type-checked: one that judged its evidence "contraindicated"
 * (the EAR status the attestation result knows) instead of throwing fails the session
 * (`attest.contraindicated`, HTTP 403), and any other value is a plugin bug (`attest.bad_status`,
 * HTTP 500); neither may be copied into an "affirming" result with an SVID.
 */
export function checkAttestorStatus(r: AttestorResult): void {
  const st: unknown = r.status;
  if (st === undefined || st === 'affirming' || st === 'warning') return;
  if (st === 'contraindicated') throw new SigilError('attest.contraindicated', 'the attestor judged the evidence contraindicated', { status: 403 });
  throw new SigilError('attest.bad_status', `the attestor returned status ${JSON.stringify(String(st)).slice(0, 80)}, not "affirming" or "warning"`, { status: 500 });
}

/** Every check, in the verifier's order, as for the first factor of a session; returns the agent ID it would give. */
export function checkAttestorResult(name: string, r: AttestorResult, trustDomain: string): SpiffeId {
  checkSelectors(name, r);
  checkAttestorStatus(r);
  return agentIdFor(trustDomain, name, r.agentIdSuffix);
}
