import type { KeyObject } from 'node:crypto';
export interface CachedX509Svid {
  entryId: string;
  spiffeId: string;
  chainDer: Buffer[];        // leaf first
  privateKey: KeyObject;     // P-256, made in the agent
  privateKeyPkcs8Der: Buffer;
  hint: string;
  expiresAt: Date;
}
export interface JwtSvidResult { spiffeId: string; token: string; hint: string; expiresAt: Date }
export interface WorkloadIdentitySource {
  /** Entries whose selectors are all among `selectors`, with their current X.509-SVIDs (only entries that already have an SVID). Synchronous, served from cache. */
  x509SvidsFor(selectors: string[]): CachedX509Svid[];
  /** X.509 trust bundles: trust domain → CA certificates (DER). Own trust domain always present. */
  x509Bundles(): Map<string, Buffer[]>;
  /** JWT bundles: trust domain → JWKS JSON bytes (as the Workload API sends them). */
  jwtBundles(): Map<string, Buffer>;
  /** Mint (or return cached until half life) JWT-SVIDs for matching entries; if spiffeId given, only that one (error if not matching). audience 1..N strings. */
  jwtSvidsFor(selectors: string[], audience: string[], spiffeId?: string): Promise<JwtSvidResult[]>;
  /** Optional fast path: what jwtSvidsFor would return when all of it is cached and fresh (undefined otherwise, or when it would fail). */
  jwtSvidsCached?(selectors: string[], audience: string[], spiffeId?: string): JwtSvidResult[] | undefined;
  /** Validate a JWT-SVID against the JWT bundles; returns SPIFFE ID and claims, or throws SigilError. */
  validateJwtSvid(token: string, audience: string): Promise<{ spiffeId: string; claims: Record<string, unknown> }>;
  /** Fires after any change of SVIDs (rotation), entries or bundles. Returns an unsubscribe function. */
  onChange(listener: () => void): () => void;
}
