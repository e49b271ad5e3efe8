/**
 * Shared pieces of the federation tests: a foreign trust domain's verifier with a bundle endpoint,
 * an agent identity attested over the real HTTPS API (join token), and the agent's view of its
 * federated bundles (`GET /v1/bundles/federated`, what agents sync).
 */
import { adminCall } from '../../src/cli/admin-client.js';
import type { RelationshipView } from '../../src/federation/service.js';
import { SpiffeBundle } from '../../src/spiffe/bundle.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/pem.js';
import { waitFor } from '../agent/harness.js';
import { httpsJson, type TestVerifier } from '../support/verifier.js';

export interface AgentIdentity {
  agentId: string;
  caPem: string;
  cert: string;
  key: string;
}

/** A join-token agent of `v` (SVID over the real attestation API), with an entry federating with `federatesWith`. */
export async function attestAgent(v: TestVerifier, federatesWith: string[]): Promise<AgentIdentity> {
  const td = v.trustDomain;
  const caPem = SpiffeBundle.fromJwks(td, v.v.core.ca.bundle().toJwks()).toPem();
  const serverId = `spiffe://${td}/sigil/verifier`;
  const tok = await adminCall<{ token: string; agentId: string }>(v.adminSocket, 'POST', '/v1/admin/tokens', {});
  await adminCall(v.adminSocket, 'POST', '/v1/admin/entries', { spiffeId: `spiffe://${td}/fed-workload`, parentId: tok.agentId, selectors: ['unix:uid:1'], federatesWith });
  const key = generateKey('ec-p256');
  const r1 = await httpsJson(v.v.port, 'POST', '/v1/attest', { caPem, serverId, body: { attestors: { join_token: { token: tok.token } }, csr: createCsr(key).toString('base64') } });
  if (r1.status !== 200) throw new Error(`attest: HTTP ${r1.status} ${JSON.stringify(r1.body)}`);
  const r2 = await httpsJson(v.v.port, 'POST', `/v1/attest/${(r1.body as { session: string }).session}`, { caPem, serverId, body: { responses: { join_token: {} } } });
  if (r2.status !== 200) throw new Error(`attest finish: HTTP ${r2.status} ${JSON.stringify(r2.body)}`);
  const svid = (r2.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
  return { agentId: tok.agentId, caPem, cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string };
}

/** What the verifier gives this agent: `{ bundles: { td: jwks }, entries: { id: [td] } }`. */
export async function federatedOf(v: TestVerifier, a: AgentIdentity): Promise<{ bundles: Record<string, { keys: unknown[]; spiffe_sequence: number }>; entries: Record<string, string[]> }> {
  const r = await httpsJson(v.v.port, 'GET', '/v1/bundles/federated', { caPem: a.caPem, cert: a.cert, key: a.key, serverId: `spiffe://${v.trustDomain}/sigil/verifier` });
  if (r.status !== 200) throw new Error(`GET /v1/bundles/federated: HTTP ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as never;
}

/** The X.509 authorities (base64 DER) of a published or served bundle. */
export function x509Of(jwks: { keys: unknown[] }): string[] {
  return (jwks.keys as { use: string; x5c?: string[] }[])
    .filter((k) => k.use === 'x509-svid')
    .map((k) => k.x5c![0]!)
    .sort();
}

export function showRel(v: TestVerifier, td: string): Promise<RelationshipView & { bundle: { keys: unknown[]; spiffe_sequence: number } | null }> {
  return adminCall(v.adminSocket, 'GET', `/v1/admin/federations/${td}`);
}

/** Wait until `v` has refreshed the relationship with `td` successfully (by its own timers). */
export function refreshedOk(v: TestVerifier, td: string, timeoutMs = 20_000): Promise<RelationshipView> {
  return waitFor(
    async () => {
      const r = await showRel(v, td);
      return r.refresh.lastSuccessAt !== undefined && r.bundleSequence !== null ? r : undefined;
    },
    timeoutMs,
    `a successful refresh of ${td}`,
    100,
  );
}

/** The admin call's refusal (a SigilError from adminCall), or a failure when it succeeded. */
export async function refusal(p: Promise<unknown>): Promise<{ code: string; message: string; status?: number }> {
  try {
    await p;
  } catch (e) {
    return e as { code: string; message: string; status?: number };
  }
  throw new Error('expected a refusal, the call succeeded');
}
