/**
 * Test helpers: join-token agents that hold `GET /v1/entries/authorized?wait=N` long-polls, with
 * admin calls made through one verifier and agent calls to another (the same one on SQLite).
 */
import { expect } from 'vitest';
import { adminCall } from '../../src/cli/admin-client.js';
import { createCsr } from '../../src/spiffe/csr.js';
import { generateKey } from '../../src/spiffe/keys.js';
import { certsToPem } from '../../src/spiffe/x509svid.js';
import { httpsJson, type TestVerifier } from './verifier.js';

export interface VerifierPair {
  /** Admin calls (tokens, evictions) go here. */
  writer: TestVerifier;
  /** Agents attest and sync here. */
  server: TestVerifier;
  /** Trust anchors for the server's TLS certificate. */
  caPem: string;
}

export interface SyncedAgent {
  agentId: string;
  tls: { cert: string; key: string };
  /** ETag of the agent's first sync. */
  etag: string;
}

export interface LongPollAnswer {
  status: number;
  code: string | undefined;
  tookMs: number;
}

/** Attest a new agent with a join token made through `p.writer` (with `spiffeId` as its alias when given), on `p.server`. */
export async function attestJoinTokenAgent(p: VerifierPair, spiffeId?: string): Promise<{ agentId: string; tls: { cert: string; key: string } }> {
  const tok = await adminCall<{ token: string; agentId: string }>(p.writer.adminSocket, 'POST', '/v1/admin/tokens', spiffeId ? { spiffeId } : {});
  const key = generateKey('ec-p256');
  const r1 = await httpsJson(p.server.v.port, 'POST', '/v1/attest', { caPem: p.caPem, body: { attestors: { join_token: { token: tok.token } }, csr: createCsr(key).toString('base64') } });
  expect(r1.status).toBe(200);
  const r2 = await httpsJson(p.server.v.port, 'POST', `/v1/attest/${(r1.body as { session: string }).session}`, { caPem: p.caPem, body: { responses: { join_token: {} } } });
  expect(r2.status).toBe(200);
  const svid = (r2.body as { svid: string[] }).svid.map((s) => Buffer.from(s, 'base64'));
  return { agentId: tok.agentId, tls: { cert: certsToPem(svid), key: key.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string } };
}

/** Attest a new agent with a join token made through `p.writer`, on `p.server`, and sync it once. */
export async function attestAndSync(p: VerifierPair): Promise<SyncedAgent> {
  const { agentId, tls } = await attestJoinTokenAgent(p);
  const r3 = await httpsJson(p.server.v.port, 'GET', '/v1/entries/authorized', { caPem: p.caPem, ...tls });
  expect(r3.status).toBe(200);
  return { agentId, tls, etag: r3.headers.etag as string };
}

/** Hold a long-poll of `a` on `p.server` with its current ETag; resolves with the answer and how long it took. */
export function holdLongPoll(p: VerifierPair, a: SyncedAgent, waitSeconds: number): Promise<LongPollAnswer> {
  const t0 = Date.now();
  return httpsJson(p.server.v.port, 'GET', `/v1/entries/authorized?wait=${waitSeconds}`, { caPem: p.caPem, ...a.tls, headers: { 'if-none-match': a.etag } }).then((r) => ({
    status: r.status,
    code: (r.body as { error?: { code?: string } } | undefined)?.error?.code,
    tookMs: Date.now() - t0,
  }));
}

/** Evict (or ban) `agentId` through `p.writer`'s admin API. */
export function evictThroughWriter(p: VerifierPair, agentId: string, ban: boolean): Promise<unknown> {
  return adminCall(p.writer.adminSocket, 'POST', '/v1/admin/agents/evict', { id: agentId, ban });
}

/** The refusal an evicted (401 agent.unknown) or banned (403 agent.banned) agent gets. */
export function refusalOf(ban: boolean): [number, string] {
  return ban ? [403, 'agent.banned'] : [401, 'agent.unknown'];
}
