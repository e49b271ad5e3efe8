/**
 * The agent's cache of authorized entries, workload X.509-SVIDs, JWT-SVIDs and bundles, served to
 * the Workload API as a `WorkloadIdentitySource`. Everything the Workload API reads synchronously
 * comes from memory, so workloads keep getting their (still valid) SVIDs while the verifier is
 * unreachable. Filled by `EntrySync`.
 */
import type { KeyObject } from 'node:crypto';
import type { Logger } from 'pino';
import { SigilError, errorFields } from '../errors.js';
import type { SpiffeBundle } from '../spiffe/bundle.js';
import { SpiffeBundle as Bundle } from '../spiffe/bundle.js';
import { decodeJwtSvidUnverified, validateJwtSvid } from '../spiffe/jwtsvid.js';
import type { CachedX509Svid, JwtSvidResult, WorkloadIdentitySource } from './identity-source.js';
import type { AuthorizedEntry } from './verifier-client.js';
import type { FederatedBundleSource, FederatedBundles } from '../federation/agent-bundles.js';

export const DEFAULT_JWT_CACHE_SIZE = 10_000;
/** Rotation jitter: ± this fraction of the rotation point. */
export const ROTATION_JITTER = 0.1;

/**
 * When to rotate an SVID: `fraction` of its lifetime (counted from `start`), ± 10 % jitter so a
 * node's SVIDs do not all renew in the same instant. Clamped to [5 %, 95 %] of the lifetime.
 */
export function rotationTime(start: Date, notAfter: Date, fraction: number, random: () => number = Math.random): Date {
  const life = Math.max(0, notAfter.getTime() - start.getTime());
  const f = Math.min(0.95, Math.max(0.05, fraction * (1 + (random() * 2 - 1) * ROTATION_JITTER)));
  return new Date(start.getTime() + life * f);
}

function sameStrings(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

/** An entry applies to a workload when all its selectors are among the workload's selectors. */
export function entryMatches(entrySelectors: readonly string[], workload: ReadonlySet<string>): boolean {
  if (entrySelectors.length === 0) return false;
  for (const s of entrySelectors) if (!workload.has(s)) return false;
  return true;
}

interface HeldSvid extends CachedX509Svid {
  rotateAt: Date;
  /** Entry fields the SVID was issued for; a change means a new SVID. */
  issuedFor: string;
}

/**
 * The last answer of jwtSvidsCached for one selector array (see there): what was asked, what was
 * answered, and while what it stays the answer.
 */
interface JwtMemo {
  /** SvidCache.jwtGen when it was made: any change of the entries or the JWT-SVID cache since makes it void. */
  gen: number;
  /** The clock when it was made; before it (the clock stepped back) it is void. */
  at: number;
  /** The first instant at which an answer could differ: a token's refresh point or expiry, an entry's expiry. */
  until: number;
  selectors: string[];
  audience: string[];
  spiffeId: string | undefined;
  keys: string[];
  results: JwtSvidResult[];
}

interface JwtCached {
  entryId: string;
  revisionNumber: number;
  result: JwtSvidResult;
  refreshAt: number;
  /** Use stamp for least-recently-used eviction (a counter, higher is more recent). */
  used: number;
}

export interface SvidCacheOptions {
  trustDomain: string;
  logger: Logger;
  now: () => Date;
  /** Fraction of the lifetime after which X.509-SVIDs rotate (default 0.5). */
  rotationFraction?: number;
  random?: () => number;
  jwtCacheSize?: number;
  bundle: () => SpiffeBundle;
  /** Foreign bundles the node's entries federate with (SPIFFE Federation); never the own trust domain. */
  federated?: FederatedBundles;
  mintJwt: (entryId: string, audience: string[]) => Promise<{ token: string; spiffeId: string; expiresAt: Date }>;
}

function issuedFor(e: AuthorizedEntry): string {
  return JSON.stringify([e.spiffeId, [...e.dnsNames].sort(), e.x509SvidTtl]);
}

export class SvidCache implements WorkloadIdentitySource, FederatedBundleSource {
  private entries = new Map<string, AuthorizedEntry>();
  /** Each entry under its first selector, with its position: candidates for a workload come from its own selectors. */
  private bySelector = new Map<string, { e: AuthorizedEntry; pos: number }[]>();
  private readonly svids = new Map<string, HeldSvid>();
  private readonly jwts = new Map<string, JwtCached>();
  private jwtUses = 0;
  /** Bumped on every change of `entries` or `jwts`, which makes every JwtMemo void. */
  private jwtGen = 0;
  /** jwtSvidsCached's last answer per selector array (a connection's array is the same object call after call). */
  private jwtMemos = new WeakMap<string[], JwtMemo>();
  private readonly inflight = new Map<string, Promise<JwtSvidResult>>();
  private readonly listeners = new Set<() => void>();
  private x509BundleMap: Map<string, Buffer[]> | undefined;
  private jwtBundleMap: Map<string, Buffer> | undefined;
  private readonly fraction: number;
  private readonly random: () => number;
  private readonly jwtCacheSize: number;
  /** Fires `notify()` when the earliest held SVID or live entry expires (see scheduleExpiry). */
  private expiryTimer: NodeJS.Timeout | undefined;
  private expiryAt = Number.POSITIVE_INFINITY;

  constructor(private readonly o: SvidCacheOptions) {
    this.fraction = o.rotationFraction ?? 0.5;
    this.random = o.random ?? Math.random;
    this.jwtCacheSize = o.jwtCacheSize ?? DEFAULT_JWT_CACHE_SIZE;
  }

  /** Live entries whose selectors are all among `selectors`, in entry order. */
  private matching(selectors: string[], now: number): AuthorizedEntry[] {
    const set = new Set(selectors);
    const found: { e: AuthorizedEntry; pos: number }[] = [];
    for (const sel of set) {
      for (const c of this.bySelector.get(sel) ?? []) {
        if (this.live(c.e, now) && entryMatches(c.e.selectors, set)) found.push(c);
      }
    }
    found.sort((a, b) => a.pos - b.pos);
    return found.map((c) => c.e);
  }

  // ------------------------------------------------------------ WorkloadIdentitySource

  x509SvidsFor(selectors: string[]): CachedX509Svid[] {
    const now = this.o.now().getTime();
    const out: CachedX509Svid[] = [];
    for (const e of this.matching(selectors, now)) {
      const s = this.svids.get(e.id);
      if (!s || s.expiresAt.getTime() <= now) continue;
      out.push({ entryId: s.entryId, spiffeId: s.spiffeId, chainDer: s.chainDer, privateKey: s.privateKey, privateKeyPkcs8Der: s.privateKeyPkcs8Der, hint: s.hint, expiresAt: s.expiresAt });
    }
    return out;
  }

  x509Bundles(): Map<string, Buffer[]> {
    if (!this.x509BundleMap) {
      const m = new Map([[this.o.trustDomain, [...this.o.bundle().x509Authorities]]]);
      // Foreign bundles after the own one, which they can never replace (agent-bundles.ts refuses the own trust domain).
      for (const [td, b] of this.o.federated?.bundles() ?? []) if (!m.has(td)) m.set(td, [...b.x509Authorities]);
      this.x509BundleMap = m;
    }
    return this.x509BundleMap;
  }

  federatedX509For(entryIds: readonly string[]): Map<string, Buffer[]> {
    const out = new Map<string, Buffer[]>();
    const fed = this.o.federated;
    if (!fed) return out;
    for (const id of entryIds) {
      for (const td of fed.trustDomainsOf(id)) {
        const b = fed.bundles().get(td);
        if (b && td !== this.o.trustDomain) out.set(`spiffe://${td}`, [...b.x509Authorities]);
      }
    }
    return out;
  }

  jwtBundles(): Map<string, Buffer> {
    if (!this.jwtBundleMap) {
      const b = this.o.bundle();
      // Only the JWT authorities: JWT bundle parsers (go-spiffe's jwtbundle) require a kid on every key.
      const jwtOnly = new Bundle(this.o.trustDomain, { jwtAuthorities: b.jwtAuthorities, sequence: b.sequence, ...(b.refreshHintSeconds !== undefined ? { refreshHintSeconds: b.refreshHintSeconds } : {}) });
      this.jwtBundleMap = new Map([[this.o.trustDomain, Buffer.from(JSON.stringify(jwtOnly.toJwks()))]]);
      for (const [td, fb] of this.o.federated?.bundles() ?? []) {
        if (this.jwtBundleMap.has(td)) continue;
        const only = new Bundle(td, { jwtAuthorities: fb.jwtAuthorities, sequence: fb.sequence, ...(fb.refreshHintSeconds !== undefined ? { refreshHintSeconds: fb.refreshHintSeconds } : {}) });
        this.jwtBundleMap.set(td, Buffer.from(JSON.stringify(only.toJwks())));
      }
    }
    return this.jwtBundleMap;
  }

  /** The entries a JWT-SVID request is for (one per SPIFFE ID), and its audience as cached. */
  private jwtRequest(selectors: string[], audience: string[], spiffeId?: string, now = this.o.now().getTime()): { matches: AuthorizedEntry[]; aud: string[] } {
    if (!Array.isArray(audience) || audience.length === 0) throw new SigilError('agent.jwt_audience_required', 'a JWT-SVID needs at least one audience', { status: 400 });
    if (audience.length > 100 || audience.some((a) => typeof a !== 'string' || a.length === 0 || a.length > 256)) {
      throw new SigilError('agent.jwt_bad_audience', 'audiences must be 1–100 non-empty strings of at most 256 characters', { status: 400 });
    }
    const seen = new Set<string>();
    let matches: AuthorizedEntry[] = [];
    for (const e of this.matching(selectors, now)) {
      if (seen.has(e.spiffeId)) continue;
      seen.add(e.spiffeId);
      matches.push(e);
    }
    if (spiffeId !== undefined && spiffeId !== '') {
      matches = matches.filter((e) => e.spiffeId === spiffeId);
      if (matches.length === 0) throw new SigilError('agent.jwt_spiffe_id_not_authorized', `no entry for ${spiffeId} applies to the caller`, { status: 403 });
    }
    return { matches, aud: [...new Set(audience)].sort() };
  }

  async jwtSvidsFor(selectors: string[], audience: string[], spiffeId?: string): Promise<JwtSvidResult[]> {
    const { matches, aud } = this.jwtRequest(selectors, audience, spiffeId);
    return Promise.all(matches.map((e) => this.jwtFor(e, aud)));
  }

  /**
   * The JWT-SVIDs `jwtSvidsFor` would return, synchronously, when every one of them is cached and
   * before its refresh point (the same objects on every call until then); undefined when any
   * would have to be minted, and for requests `jwtSvidsFor` refuses (it gives the error).
   */
  jwtSvidsCached(selectors: string[], audience: string[], spiffeId?: string): JwtSvidResult[] | undefined {
    const now = this.o.now().getTime();
    const memo = this.jwtMemos.get(selectors);
    if (memo !== undefined && memo.gen === this.jwtGen && now >= memo.at && now < memo.until && memo.spiffeId === spiffeId && sameStrings(memo.selectors, selectors) && sameStrings(memo.audience, audience)) {
      for (const key of memo.keys) this.touchJwt(key);
      return memo.results.slice();
    }
    let req: { matches: AuthorizedEntry[]; aud: string[] };
    try {
      req = this.jwtRequest(selectors, audience, spiffeId, now);
    } catch {
      return undefined;
    }
    const out: JwtSvidResult[] = [];
    const keys: string[] = [];
    let until = Number.POSITIVE_INFINITY;
    for (const e of req.matches) {
      const key = this.jwtKey(e, req.aud);
      const hit = this.jwts.get(key);
      if (!hit || now >= hit.refreshAt || hit.result.expiresAt.getTime() <= now) return undefined;
      out.push(hit.result);
      keys.push(key);
      until = Math.min(until, hit.refreshAt, hit.result.expiresAt.getTime(), this.liveUntil(e));
    }
    for (const key of keys) this.touchJwt(key);
    // Remembered for the next call with the same selectors, audience and SPIFFE ID. Why that
    // answer is then the one computed anew would be: the request checks and the matching are
    // pure functions of those inputs and of the entries; the answer's tokens are what `jwts`
    // holds under its keys; `gen` changes with any change to the entries or to `jwts` (a token
    // minted, refreshed, evicted or dropped), and `until` is the earliest instant at which the
    // clock alone could change the answer (a token reaching its refresh point or expiry, a matched
    // entry expiring; an entry that did not match or had expired cannot start to apply while the
    // clock goes forward, and a clock that went back voids the memo). The inputs are compared by
    // value, so an array changed in place is not answered from the memo.
    this.jwtMemos.set(selectors, { gen: this.jwtGen, at: now, until, selectors: selectors.slice(), audience: audience.slice(), spiffeId, keys, results: out.slice() });
    return out;
  }

  /**
   * Over the bound: drop the least recently used tokens, 1 % of the bound at once (at least the
   * excess), so that the scan over the cache is paid once per that many new tokens rather than
   * on every one (a workload asking for ever new audiences makes a new token per call).
   */
  private evictJwts(): void {
    const excess = this.jwts.size - this.jwtCacheSize;
    if (excess <= 0) return;
    const drop = Math.min(this.jwts.size, Math.max(excess, Math.ceil(this.jwtCacheSize / 100)));
    const uses: number[] = [];
    for (const v of this.jwts.values()) uses.push(v.used);
    uses.sort((a, b) => a - b);
    // Use stamps are unique, so exactly `drop` entries have a stamp at or below the cut.
    const cut = uses[drop - 1]!;
    for (const [k, v] of this.jwts) if (v.used <= cut) this.jwts.delete(k);
    this.jwtGen++;
  }

  /**
   * Mark a cached JWT-SVID most recently used. A stamp, not a re-insertion: deleting and setting
   * the key on every hit made the long-lived map reallocate its table and keep each call's new
   * key string, all of which was promoted to the old generation and later collected there.
   */
  private touchJwt(key: string): void {
    const hit = this.jwts.get(key);
    if (hit !== undefined) hit.used = ++this.jwtUses;
  }

  async validateJwtSvid(token: string, audience: string): Promise<{ spiffeId: string; claims: Record<string, unknown> }> {
    const b = this.o.bundle();
    const v = await validateJwtSvid(token, {
      audience,
      // A JWT-SVID of a federated trust domain is checked against that trust domain's bundle only.
      keysFor: (td) => (td === this.o.trustDomain ? b.jwtAuthorities : this.o.federated?.bundles().get(td)?.jwtAuthorities),
      now: this.o.now(),
    });
    return { spiffeId: v.spiffeId.toString(), claims: v.claims };
  }

  onChange(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  // ------------------------------------------------------------ maintenance (EntrySync)

  /** Tell listeners that SVIDs, entries or bundles changed. */
  notify(): void {
    for (const l of [...this.listeners]) {
      try {
        l();
      } catch (e) {
        this.o.logger.error(errorFields(e), 'workload identity listener failed');
      }
    }
  }

  /** The trust bundle changed: rebuild bundle views and notify. */
  bundleUpdated(): void {
    this.x509BundleMap = undefined;
    this.jwtBundleMap = undefined;
    this.notify();
  }

  /**
   * Replace the authorized entries. SVIDs of removed entries are dropped, and of entries whose
   * SPIFFE ID, DNS names or TTL changed (they are issued again). Returns true if anything changed.
   */
  setEntries(list: AuthorizedEntry[]): boolean {
    const next = new Map<string, AuthorizedEntry>();
    for (const e of list) next.set(e.id, e);
    let changed = next.size !== this.entries.size;
    for (const [id, e] of next) {
      const old = this.entries.get(id);
      if (!old || old.revisionNumber !== e.revisionNumber || JSON.stringify(old) !== JSON.stringify(e)) changed = true;
    }
    for (const [id, s] of this.svids) {
      const e = next.get(id);
      if (!e || issuedFor(e) !== s.issuedFor) {
        this.svids.delete(id);
        changed = true;
      }
    }
    for (const [k, v] of this.jwts) {
      if (next.get(v.entryId)?.revisionNumber !== v.revisionNumber) this.jwts.delete(k);
    }
    this.entries = next;
    this.jwtGen++;
    const index = new Map<string, { e: AuthorizedEntry; pos: number }[]>();
    let pos = 0;
    for (const e of next.values()) {
      const first = e.selectors[0];
      if (first === undefined) continue; // never matches
      let l = index.get(first);
      if (!l) index.set(first, (l = []));
      l.push({ e, pos: pos++ });
    }
    this.bySelector = index;
    this.scheduleExpiry();
    return changed;
  }

  entryCount(): number {
    return this.entries.size;
  }

  svidCount(): number {
    return this.svids.size;
  }

  /** JWT-SVIDs held in the cache (some may be past their expiry until evicted or replaced). */
  jwtCount(): number {
    return this.jwts.size;
  }

  /** Entries that need an X.509-SVID now: none yet, rotation due, or expired. */
  dueForIssue(now: Date = this.o.now()): AuthorizedEntry[] {
    const t = now.getTime();
    const out: AuthorizedEntry[] = [];
    for (const e of this.entries.values()) {
      if (!this.live(e, t)) continue;
      const s = this.svids.get(e.id);
      if (!s || s.rotateAt.getTime() <= t) out.push(e);
    }
    return out;
  }

  /** Earliest rotation point of a held SVID (undefined: none held). */
  nextRotation(): Date | undefined {
    let min: number | undefined;
    for (const s of this.svids.values()) if (min === undefined || s.rotateAt.getTime() < min) min = s.rotateAt.getTime();
    return min === undefined ? undefined : new Date(min);
  }

  /** Store a freshly issued, already verified SVID for `entry`. `receivedAt` starts its rotation clock. */
  putSvid(entry: AuthorizedEntry, chainDer: Buffer[], privateKey: KeyObject, notBefore: Date, notAfter: Date, receivedAt: Date): void {
    if (!this.entries.has(entry.id)) return; // removed while the CSR was in flight
    const start = new Date(Math.max(notBefore.getTime(), receivedAt.getTime()));
    this.svids.set(entry.id, {
      entryId: entry.id,
      spiffeId: entry.spiffeId,
      chainDer,
      privateKey,
      privateKeyPkcs8Der: privateKey.export({ format: 'der', type: 'pkcs8' }),
      hint: entry.hint,
      expiresAt: notAfter,
      rotateAt: rotationTime(start, notAfter, this.fraction, this.random),
      issuedFor: issuedFor(entry),
    });
    if (notAfter.getTime() < this.expiryAt) this.scheduleExpiry();
  }

  /**
   * Listeners (the Workload API's response cache and open streams) must hear when an SVID or an
   * entry expires even if nothing else changes — say, while the verifier is unreachable and no
   * rotation succeeds — so that nothing expired is served from a cached response. One timer, at
   * the earliest expiry; it notifies and re-arms itself.
   */
  private scheduleExpiry(): void {
    clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    const now = this.o.now().getTime();
    let next = Number.POSITIVE_INFINITY;
    for (const sv of this.svids.values()) {
      const t = sv.expiresAt.getTime();
      if (t > now && t < next) next = t;
    }
    for (const e of this.entries.values()) {
      const t = e.expiresAt === null ? Number.NaN : Date.parse(e.expiresAt);
      if (t > now && t < next) next = t;
    }
    this.expiryAt = next;
    if (next === Number.POSITIVE_INFINITY) return;
    const delay = Math.min(next - now + 1, 2 ** 31 - 1);
    this.expiryTimer = setTimeout(() => {
      this.expiryTimer = undefined;
      this.notify();
      this.scheduleExpiry();
    }, delay);
    this.expiryTimer.unref();
  }

  /** Stop the expiry timer (the agent is shutting down). */
  close(): void {
    clearTimeout(this.expiryTimer);
    this.expiryTimer = undefined;
    this.expiryAt = Number.POSITIVE_INFINITY;
  }

  /** The held SVID of an entry (for status and tests). */
  svidOf(entryId: string): (CachedX509Svid & { rotateAt: Date }) | undefined {
    return this.svids.get(entryId);
  }

  private live(e: AuthorizedEntry, now: number): boolean {
    if (e.expiresAt === null) return true;
    const t = Date.parse(e.expiresAt);
    return Number.isNaN(t) || t > now;
  }

  /** The instant from which live() is false for `e` (infinity: never). */
  private liveUntil(e: AuthorizedEntry): number {
    if (e.expiresAt === null) return Number.POSITIVE_INFINITY;
    const t = Date.parse(e.expiresAt);
    return Number.isNaN(t) ? Number.POSITIVE_INFINITY : t;
  }

  private jwtKey(e: AuthorizedEntry, aud: string[]): string {
    return JSON.stringify([e.id, e.revisionNumber, aud]);
  }

  private async jwtFor(e: AuthorizedEntry, aud: string[]): Promise<JwtSvidResult> {
    const key = this.jwtKey(e, aud);
    const now = this.o.now().getTime();
    const hit = this.jwts.get(key);
    if (hit && now < hit.refreshAt && hit.result.expiresAt.getTime() > now) {
      this.touchJwt(key);
      return hit.result;
    }
    let p = this.inflight.get(key);
    if (!p) {
      p = this.mint(e, aud, key).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    try {
      return await p;
    } catch (err) {
      // Verifier unreachable: a cached token past its refresh point but still valid is better than none.
      if (hit && hit.result.expiresAt.getTime() > this.o.now().getTime()) return hit.result;
      throw err;
    }
  }

  private async mint(e: AuthorizedEntry, aud: string[], key: string): Promise<JwtSvidResult> {
    const r = await this.o.mintJwt(e.id, aud);
    // The verifier is authenticated, but a wrong token must never reach a workload: check what it claims.
    const { claims } = decodeJwtSvidUnverified(r.token);
    const tokAud = typeof claims.aud === 'string' ? [claims.aud] : Array.isArray(claims.aud) ? claims.aud : [];
    if (claims.sub !== e.spiffeId || r.spiffeId !== e.spiffeId || !aud.every((a) => tokAud.includes(a))) {
      throw new SigilError('agent.verifier_bad_response', `verifier minted a JWT-SVID for ${String(claims.sub)} / ${JSON.stringify(tokAud)}; expected ${e.spiffeId} / ${JSON.stringify(aud)}`, { status: 502 });
    }
    const receivedAt = this.o.now().getTime();
    const result: JwtSvidResult = { spiffeId: e.spiffeId, token: r.token, hint: e.hint, expiresAt: r.expiresAt };
    const refreshAt = receivedAt + Math.max(0, r.expiresAt.getTime() - receivedAt) / 2;
    this.jwts.set(key, { entryId: e.id, revisionNumber: e.revisionNumber, result, refreshAt, used: ++this.jwtUses });
    this.jwtGen++;
    if (this.jwts.size > this.jwtCacheSize) this.evictJwts();
    return result;
  }
}
