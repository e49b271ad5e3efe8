/**
 * The Workload API's responses, encoded and gRPC-framed once and shared: keyed by what they
 * depend on (the selector set, or the bundle kind), so many clients with the same selectors share
 * one buffer, written as is to every stream (never mutated). The cache is emptied on every change
 * of the identity source (see clear()); JWT-SVID responses are kept with their tokens instead.
 */
import type { Logger } from 'pino';
import { SpiffeId, parseTrustDomain } from '../../spiffe/id.js';
import type { CachedX509Svid, JwtSvidResult, WorkloadIdentitySource } from '../identity-source.js';
import type { FederatedBundleSource } from '../../federation/agent-bundles.js';
import type { ConnAttestation } from './connection.js';
import { frameMessage } from './grpc.js';
import { encodeMessage, workloadCodecs, type X509SvidMsg } from './proto.js';

/** Entries kept before the cache is emptied (selector sets are few in practice). */
const MAX_ENTRIES = 4096;

function tdKey(td: string): string {
  return `spiffe://${parseTrustDomain(td)}`;
}

function concat(ders: readonly Uint8Array[]): Buffer {
  return Buffer.concat(ders);
}

export class ResponseCache {
  private readonly codecs = workloadCodecs();
  private readonly cache = new Map<string, Buffer | null>();
  /**
   * Cached tokens are the same objects on every call until they are refreshed, so the encoding
   * is kept with the first of them (a WeakMap: it goes when the token does) and reused while the
   * whole list is the same.
   */
  private readonly jwtEncodings = new WeakMap<JwtSvidResult, { results: JwtSvidResult[]; framed: Buffer }>();

  constructor(
    private readonly source: WorkloadIdentitySource,
    private readonly logger: Logger,
  ) {}

  /** Forget every response (the identity source changed). */
  clear(): void {
    this.cache.clear();
  }

  /** The framed FetchX509SVID response for an attestation (null: no SVID for its selectors). */
  x509For(a: ConnAttestation): Buffer | null {
    return this.cached(a.x509Key, () => this.x509Response(this.source.x509SvidsFor(a.selectors)));
  }

  /** The framed FetchX509Bundles response (null: no bundle yet). */
  x509Bundles(): Buffer | null {
    return this.cached('x509-bundles', () => this.x509BundlesResponse());
  }

  /** The framed FetchJWTBundles response (null: no bundle yet). */
  jwtBundles(): Buffer | null {
    return this.cached('jwt-bundles', () => this.jwtBundlesResponse());
  }

  /** The framed FetchJWTSVID response for `results` (at least one). */
  jwt(results: JwtSvidResult[]): Buffer {
    const first = results[0]!;
    const hit = this.jwtEncodings.get(first);
    if (hit && hit.results.length === results.length && hit.results.every((r, i) => r === results[i])) return hit.framed;
    const hints = new Set<string>();
    const svids = [];
    for (const r of results) {
      if (r.hint.length > 0) {
        if (hints.has(r.hint)) continue;
        hints.add(r.hint);
      }
      svids.push({ spiffe_id: r.spiffeId, svid: r.token, hint: r.hint });
    }
    const framed = frameMessage(encodeMessage(this.codecs.JWTSVIDResponse, { svids }));
    this.jwtEncodings.set(first, { results: [...results], framed });
    return framed;
  }

  private cached(key: string, build: () => Uint8Array | null): Buffer | null {
    const hit = this.cache.get(key);
    if (hit !== undefined || this.cache.has(key)) return hit ?? null;
    const msg = build();
    const v = msg === null ? null : frameMessage(msg);
    if (this.cache.size >= MAX_ENTRIES) this.cache.clear();
    this.cache.set(key, v);
    return v;
  }

  private x509Response(svids: CachedX509Svid[]): Uint8Array | null {
    if (svids.length === 0) return null;
    const bundles = new Map<string, Buffer[]>();
    for (const [td, certs] of this.source.x509Bundles()) bundles.set(tdKey(td), certs);
    const own = new Set<string>();
    const hints = new Set<string>();
    const out: X509SvidMsg[] = [];
    for (const s of svids) {
      if (s.hint.length > 0) {
        if (hints.has(s.hint)) {
          this.logger.warn({ spiffeId: s.spiffeId, hint: s.hint }, 'two SVIDs with the same hint; only the first is served');
          continue;
        }
        hints.add(s.hint);
      }
      const td = `spiffe://${SpiffeId.parse(s.spiffeId).trustDomain}`;
      own.add(td);
      out.push({
        spiffe_id: s.spiffeId,
        x509_svid: concat(s.chainDer),
        x509_svid_key: s.privateKeyPkcs8Der,
        bundle: concat(bundles.get(td) ?? []),
        hint: s.hint,
      });
    }
    const federated: Record<string, Uint8Array> = {};
    // SPIFFE Federation: only the foreign bundles this caller's entries federate with (src/federation/).
    const perCaller = (this.source as Partial<FederatedBundleSource>).federatedX509For?.call(this.source, svids.map((s) => s.entryId));
    for (const [td, certs] of perCaller ?? bundles) if (!own.has(td)) federated[td] = concat(certs);
    return encodeMessage(this.codecs.X509SVIDResponse, { svids: out, crl: [], federated_bundles: federated });
  }

  private x509BundlesResponse(): Uint8Array | null {
    const bundles: Record<string, Uint8Array> = {};
    for (const [td, certs] of this.source.x509Bundles()) bundles[tdKey(td)] = concat(certs);
    if (Object.keys(bundles).length === 0) return null;
    return encodeMessage(this.codecs.X509BundlesResponse, { crl: [], bundles });
  }

  private jwtBundlesResponse(): Uint8Array | null {
    const bundles: Record<string, Uint8Array> = {};
    for (const [td, jwks] of this.source.jwtBundles()) bundles[tdKey(td)] = jwks;
    if (Object.keys(bundles).length === 0) return null;
    return encodeMessage(this.codecs.JWTBundlesResponse, { bundles });
  }
}
