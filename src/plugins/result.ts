/** The checks the verifier makes on what a node attestor's `finish` returned (DESIGN §3–4). */
import { SigilError } from '../errors.js';
import { SpiffeId } from '../spiffe/id.js';
import type { AttestorResult } from './types.js';

/**
 * Throws `attest.bad_selector` unless every selector is a string `<name>:…`, and
 * `attest.bad_agent_id` unless `spiffe://<trustDomain>/sigil/agent/<name>/<agentIdSuffix>` is a valid
 * SPIFFE ID (HTTP 500 both: the plugin misbehaved).
 */
export function checkAttestorResult(name: string, r: AttestorResult, trustDomain: string): SpiffeId {
  if (typeof r !== 'object' || r === null || !Array.isArray(r.selectors)) {
    throw new SigilError('attest.bad_selector', `attestor "${name}" returned no selector list`, { status: 500 });
  }
  for (const sel of r.selectors as unknown[]) {
    if (typeof sel !== 'string' || !sel.startsWith(`${name}:`)) {
      throw new SigilError('attest.bad_selector', `attestor "${name}" produced selector "${String(sel)}" outside its own type`, { status: 500 });
    }
  }
  try {
    return SpiffeId.fromPath(trustDomain, `/sigil/agent/${name}/${String(r.agentIdSuffix)}`);
  } catch (e) {
    throw new SigilError('attest.bad_agent_id', `attestor "${name}" produced an agent ID suffix that is not a valid SPIFFE path: ${(e as Error).message}`, { status: 500 });
  }
}
