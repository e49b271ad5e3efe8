/**
 * The Workload API's responses, encoded and gRPC-framed once and shared: keyed by what they
 * depend on (the selector set, or the bundle kind and the caller's set of federated trust
 * domains), so many clients with the same selectors share one buffer, written as is to every
 * stream (never mutated). The cache is emptied on every change of the identity source (see
 * clear()); JWT-SVID responses are kept with their tokens instead.
 *
 * Bundles are per caller (SPIFFE Federation, as the Workload API standard and SPIRE serve them):
 * a caller gets its own trust domain's bundle plus the foreign bundles of the trust domains its
 * matched entries federate with (`federatesWith`), and nothing of other foreign trust domains the
 * node holds for other workloads. See trustFor().
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

/** `spiffe://td` for a bundle map key, which is `td` or `spiffe://td`. */
function tdKey(td: string): string {
  return `spiffe://${parseTrustDomain(td)}`;
}

/** The trust domain name of a bundle map key. */
const bareTd = parseTrustDomain;

function concat(ders: readonly Uint8Array[]): Buffer {
  return Buffer.concat(ders);
}

/** The trust domains a caller may see bundles of and have JWT-SVIDs validated against. */
export interface CallerTrust {
  /** The agent's own trust domain and the foreign ones the caller's entries federate with (bare names). */
  trustDomains: ReadonlySet<string>;
  /** Response-cache key part: the foreign trust domains, sorted. */
  key: string;
}

export class ResponseCache {
  private readonly codecs = workloadCodecs();
  private readonly cache = new Map<string, Buffer | null>();
  /** CallerTrust by selector set (x509Key), emptied with the responses. */
  private readonly trust = new Map<string, CallerTrust>();
  /** Whether the source holds any foreign bundle (undefined: not known since the last change). */
  private foreignHeld: boolean | undefined;
  /** What a caller gets while no foreign bundle is held. */
  private readonly ownOnly: CallerTrust;
  /**
   * Cached tokens are the same objects on every call until they are refreshed, so the encoding
   * is kept with the first of them (a WeakMap: it goes when the token does) and reused while the
   * whole list is the same.
   */
  private readonly jwtEncodings = new WeakMap<JwtSvidResult, { results: JwtSvidResult[]; framed: Buffer }>();

  /**
   * @param trustDomain the agent's own trust domain: its bundle goes to every caller, and a
   *   foreign bundle is never served in its place.
   */
  constructor(
    private readonly source: WorkloadIdentitySource,
    private readonly logger: Logger,
    private readonly trustDomain: string,
  ) {
    this.ownOnly = { trustDomains: new Set([trustDomain]), key: '' };
  }

  /** Forget every response (the identity source changed). */
  clear(): void {
    this.cache.clear();
    this.trust.clear();
    this.foreignHeld = undefined;
  }

  /**
   * Whether bundles depend on the caller: true when the node holds a foreign bundle. Until then
   * every caller gets the own bundle alone and need not be attested for it.
   */
  federating(): boolean {
    if (this.foreignHeld === undefined) {
      this.foreignHeld = false;
      for (const k of this.source.x509Bundles().keys()) if (bareTd(k) !== this.trustDomain) this.foreignHeld = true;
    }
    return this.foreignHeld;
  }

  /** The framed FetchX509SVID response for an attestation (null: no SVID for its selectors). */
  x509For(a: ConnAttestation): Buffer | null {
    const hit = this.cache.get(a.x509Key);
    if (hit !== undefined) return hit;
    return this.cached(a.x509Key, () => this.x509Response(this.source.x509SvidsFor(a.selectors)));
  }

  /**
   * The trust domains whose bundles the caller gets: the own one, and the foreign ones that its
   * entries (those with an SVID, as in its FetchX509SVID response) federate with. A source that
   * does not say which entry federates with what (no `federatedX509For`) gives every bundle it has.
   * Without an attestation (undefined: the node holds no foreign bundle), the own trust domain.
   */
  trustFor(a: ConnAttestation | undefined): CallerTrust {
    if (a === undefined || !this.federating()) return this.ownOnly;
    const hit = this.trust.get(a.x509Key);
    if (hit !== undefined) return hit;
    const perCaller = this.federatedOf(this.source.x509SvidsFor(a.selectors));
    const foreign = [...(perCaller ?? this.source.x509Bundles()).keys()].map(bareTd).filter((td) => td !== this.trustDomain).sort();
    const t: CallerTrust = { trustDomains: new Set([this.trustDomain, ...foreign]), key: foreign.join('\0') };
    if (this.trust.size >= MAX_ENTRIES) this.trust.clear();
    this.trust.set(a.x509Key, t);
    return t;
  }

  /** The framed FetchX509Bundles response for a caller (null: no bundle yet). */
  x509Bundles(a: ConnAttestation | undefined): Buffer | null {
    const t = this.trustFor(a);
    return this.cached(`x509-bundles\0${t.key}`, () => this.x509BundlesResponse(t));
  }

  /** The framed FetchJWTBundles response for a caller (null: no bundle yet). */
  jwtBundles(a: ConnAttestation | undefined): Buffer | null {
    const t = this.trustFor(a);
    return this.cached(`jwt-bundles\0${t.key}`, () => this.jwtBundlesResponse(t));
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
    for (const [td, certs] of this.federatedOf(svids) ?? bundles) if (!own.has(td) && td !== tdKey(this.trustDomain)) federated[td] = concat(certs);
    return encodeMessage(this.codecs.X509SVIDResponse, { svids: out, crl: [], federated_bundles: federated });
  }

  /** Foreign X.509 bundles (`spiffe://td` keys) these SVIDs' entries federate with; undefined if the source cannot tell. */
  private federatedOf(svids: readonly CachedX509Svid[]): Map<string, Buffer[]> | undefined {
    return (this.source as Partial<FederatedBundleSource>).federatedX509For?.call(
      this.source,
      svids.map((s) => s.entryId),
    );
  }

  private x509BundlesResponse(t: CallerTrust): Uint8Array | null {
    const bundles: Record<string, Uint8Array> = {};
    for (const [td, certs] of this.source.x509Bundles()) if (t.trustDomains.has(bareTd(td))) bundles[tdKey(td)] = concat(certs);
    if (Object.keys(bundles).length === 0) return null;
    return encodeMessage(this.codecs.X509BundlesResponse, { crl: [], bundles });
  }

  private jwtBundlesResponse(t: CallerTrust): Uint8Array | null {
    const bundles: Record<string, Uint8Array> = {};
    for (const [td, jwks] of this.source.jwtBundles()) if (t.trustDomains.has(bareTd(td))) bundles[tdKey(td)] = jwks;
    if (Object.keys(bundles).length === 0) return null;
    return encodeMessage(this.codecs.JWTBundlesResponse, { bundles });
  }
}
