/**
 * Join tokens: single use, expiring. Only a SHA-256 of the secret is stored, in the tokens table and
 * (through `JoinTokenDigestServices`) in the join_token attestor's session state.
 */
import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { SigilError } from '../errors.js';
import type { DataStore, NewEntry } from '../store/types.js';
import type { VerifierServices } from '../plugins/types.js';
import { verifierId } from './entries.js';

export function hashToken(token: string): string {
  return createHash('sha256').update(token, 'utf8').digest('hex');
}

export interface GeneratedToken {
  token: string;
  tokenId: string;
  agentId: string;
  expiresAt: string;
  aliasEntryId?: string;
}

export async function generateJoinToken(store: DataStore, trustDomain: string, ttlSeconds: number, now: Date, aliasSpiffeId?: string): Promise<GeneratedToken> {
  if (!Number.isFinite(ttlSeconds) || ttlSeconds < 1 || ttlSeconds > 30 * 86400) {
    throw new SigilError('token.invalid_ttl', 'token TTL must be between 1 second and 30 days');
  }
  const token = randomBytes(32).toString('base64url');
  const tokenId = randomUUID();
  const expiresAt = new Date(now.getTime() + ttlSeconds * 1000).toISOString();
  const agentId = `spiffe://${trustDomain}/sigil/agent/join_token/${tokenId}`;
  const rec = { id: tokenId, secretHash: hashToken(token), expiresAt, usedAt: null, spiffeId: aliasSpiffeId ?? null, createdAt: now.toISOString() };
  if (aliasSpiffeId) {
    const alias: NewEntry = {
      spiffeId: aliasSpiffeId,
      parentId: verifierId(trustDomain),
      selectors: [`sigil:agent_id:${agentId}`],
      x509SvidTtl: 0,
      jwtSvidTtl: 0,
      dnsNames: [],
      hint: 'join token node alias',
      admin: false,
      expiresAt: null,
    };
    const e = await store.createJoinTokenWithAlias(rec, alias);
    return { token, tokenId, agentId, expiresAt, aliasEntryId: e.id };
  }
  await store.createJoinToken(rec);
  return { token, tokenId, agentId, expiresAt };
}

/**
 * The join_token attestor's view of the tokens by digest, so that what it keeps between `begin`
 * and `commit` (session state, in the datastore) is the digest and never the secret.
 */
/** The digest half of VerifierServices (kept as a name for callers that only need it). */
export type JoinTokenDigestServices = Pick<VerifierServices, 'digestJoinToken' | 'checkJoinTokenDigest' | 'consumeJoinTokenDigest'>;

export function joinTokenServices(store: DataStore): VerifierServices {
  const checkDigest = async (digest: string, now: Date): Promise<{ tokenId: string }> => {
    const t = await store.getJoinTokenByHash(digest);
    if (!t) throw new SigilError('join_token.unknown', 'join token is not known', { status: 401 });
    if (t.usedAt) throw new SigilError('join_token.used', 'join token was already used', { status: 401 });
    if (Date.parse(t.expiresAt) <= now.getTime()) throw new SigilError('join_token.expired', `join token expired at ${t.expiresAt}`, { status: 401 });
    return { tokenId: t.id };
  };
  const consumeDigest = async (digest: string, now: Date): Promise<{ tokenId: string }> => {
    const t = await store.useJoinToken(digest, now);
    if (!t) {
      // Say precisely why (the lookup is by digest, so this reveals nothing about the secret).
      await checkDigest(digest, now);
      throw new SigilError('join_token.used', 'join token was already used', { status: 401 });
    }
    return { tokenId: t.id };
  };
  return {
    digestJoinToken: hashToken,
    checkJoinTokenDigest: checkDigest,
    consumeJoinTokenDigest: consumeDigest,
    checkJoinToken: (token, now) => checkDigest(hashToken(token), now),
    consumeJoinToken: (token, now) => consumeDigest(hashToken(token), now),
  };
}
