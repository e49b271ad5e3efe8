import type { AttestorResult, NodeAttestorVerifier, SessionInput } from '../../src/plugins/types.js';

/** finish() then, on success, commit() — what the verifier does when every factor passed. */
export async function finishAndCommit(v: NodeAttestorVerifier, response: unknown, state: unknown, session: SessionInput): Promise<AttestorResult> {
  const r = await v.finish(response, state, session);
  await v.commit?.(state, session);
  return r;
}
