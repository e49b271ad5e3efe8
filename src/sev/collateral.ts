/**
 * SEV-SNP collateral for the verifier (I/O, kept apart from the pure verifier): a local cache
 * directory and, when enabled, AMD KDS. Nothing read here is trusted — every certificate still
 * goes through verifyEndorsementChain against the pinned ARK.
 *
 * Directory layout (`collateralDir`):
 *   <dir>/<product>/<hwIdHex>-<reportedTcbHex>.der   VCEK (hwID = 64-byte CHIP_ID; 8 bytes on Turin)
 *   <dir>/ask_ark_<product>.pem                        ASK then ARK
 *   <dir>/asvk_ark_<product>.pem                       ASVK then ARK (VLEK chains)
 *   <dir>/crl_<vcek|vlek>_<product>.der                AMD's CRL for that product line and key kind
 * KDS (off by default; needs the network):
 *   GET <base>/vcek/v1/<Product>/<hwIdHex>?[fmcSPL=..&]blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..  → VCEK DER
 *   GET <base>/vcek/v1/<Product>/cert_chain, <base>/vlek/v1/<Product>/cert_chain               → PEM
 *   GET <base>/vcek/v1/<Product>/crl, <base>/vlek/v1/<Product>/crl                             → DER CRL (signed by the ARK)
 * Nothing fetched from KDS is cached by the lookup itself: lookupVcek/lookupChain hand back a
 * `persist()` that the caller runs only once the certificates verified against the pinned ARK (a
 * chain on its own, a VCEK through its chain); it writes them into the directory (when one is
 * configured) and a bounded in-memory cache. A fetched VCEK is cached only under the chip and TCB
 * it names: its persist() does nothing unless its hwID is the requested CHIP_ID (in that product's
 * form) and its SPLs are the requested TCB. A CRL is cached the same way, once it verified against
 * the pinned ARK (crl.ts verifyAmdCrl), and used from the cache only until its nextUpdate (at the
 * time the caller passes in); past it, KDS is asked again (the stale copy is returned when KDS has
 * none, so the verifier says it expired).
 *
 * KDS requests are guarded, because the request is made before the report signature can be checked
 * (that needs the VCEK being fetched), so a forged report picks the CHIP_ID and TCB in the URL:
 * a token bucket caps requests per minute (`maxRequestsPerMinute`, over the limit →
 * sev.kds_rate_limited), a 404 is remembered for 10 minutes per URL, and concurrent requests for one
 * URL share a single fetch. The bucket is one per source (per verifier) and shared by every caller:
 * whoever makes the verifier ask KDS spends it for everyone.
 *
 * An answer is read as a stream and the read is aborted as soon as it passes 64 KiB (or up front when
 * Content-Length says so). `baseUrl` must be https://, or http:// on a loopback host (tests); a
 * redirect is never followed (a 3xx answer is sev.kds_fetch_failed).
 */
import { mkdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import { replaceFileAtomicAsync } from '../util/atomic-file.js';
import { certificatesFromFile, endorsementTcb, parseAmdExtensions, parseSevCert, pemToDerList, productFromEndorsementCert } from './certs.js';
import { amdCrlNextUpdate } from './crl.js';
import { type SnpProduct, type SnpSigningKey, decodeTcb, hwIdForProduct, tcbHex } from './report.js';

export const DEFAULT_KDS_BASE_URL = 'https://kdsintf.amd.com';
const PRODUCT_TITLE: Record<SnpProduct, string> = { milan: 'Milan', genoa: 'Genoa', turin: 'Turin' };
const MAX_KDS_BYTES = 64 * 1024;
const KDS_TIMEOUT_MS = 10_000;

export const DEFAULT_KDS_MAX_REQUESTS_PER_MINUTE = 30;
/** How long a KDS 404 for a URL is remembered (no new request for it meanwhile). */
export const KDS_NOT_FOUND_TTL_MS = 10 * 60_000;
const NOT_FOUND_MAX = 4096;
const MEMORY_CACHE_MAX = 512;

export interface KdsOptions {
  enabled: boolean;
  baseUrl: string;
  /** Token bucket: at most this many KDS requests in a burst, refilled at this many per minute. Default 30. */
  maxRequestsPerMinute?: number;
}

/** The part of a fetch Response the KDS client uses (the global fetch's Response fits). */
export interface KdsResponse {
  ok: boolean;
  status: number;
  headers: { get(name: string): string | null };
  body: ReadableStream<Uint8Array> | null;
}

/** `redirect: 'manual'`: a 3xx answer is returned as is (and refused), never followed. */
export type FetchLike = (url: string, init: { signal: AbortSignal; headers?: Record<string, string>; redirect?: 'manual' }) => Promise<KdsResponse>;

function isLoopbackHost(hostname: string): boolean {
  // URL normalises IPv4 forms (127.1 → 127.0.0.1) and brackets IPv6 literals.
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

/**
 * Refuse a KDS base URL that is not https:// (plain http:// is accepted only for a loopback host,
 * i.e. a local test server), or that carries credentials, a query or a fragment → sev.config_invalid.
 */
export function checkKdsBaseUrl(baseUrl: string): void {
  let u: URL;
  try {
    u = new URL(baseUrl);
  } catch {
    throw new SigilError('sev.config_invalid', `kds.baseUrl "${baseUrl}" is not a valid URL`);
  }
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) {
    throw new SigilError(
      'sev.config_invalid',
      `kds.baseUrl "${baseUrl}" must use https:// (http:// is accepted only for a loopback host such as 127.0.0.1, ::1 or localhost, e.g. a local test server)`,
    );
  }
  if (u.username !== '' || u.password !== '' || u.search !== '' || u.hash !== '') {
    throw new SigilError('sev.config_invalid', `kds.baseUrl "${baseUrl}" must not carry credentials, a query or a fragment`);
  }
}

export function vcekFileName(dir: string, product: SnpProduct, chipId: Buffer, reportedTcb: Buffer): string {
  return join(dir, product, `${hwIdForProduct(chipId, product).toString('hex')}-${tcbHex(reportedTcb)}.der`);
}

export function chainFileName(dir: string, product: SnpProduct, kind: SnpSigningKey): string {
  return join(dir, `${kind === 'vcek' ? 'ask' : 'asvk'}_ark_${product}.pem`);
}

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (e) {
    const code = typeof e === 'object' && e !== null && 'code' in e ? (e as { code: unknown }).code : '';
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new SigilError('sev.collateral_unreadable', `cannot read collateral ${path}: ${errorMessage(e)}`, { cause: e, status: 500 });
  }
}

/** Write durably (util/atomic-file.ts) so a concurrent reader never sees half a certificate; public data (0644). */
async function writeAtomic(path: string, data: Buffer | string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  await replaceFileAtomicAsync(path, data, 0o644);
}

export function kdsVcekUrl(baseUrl: string, product: SnpProduct, chipId: Buffer, reportedTcb: Buffer): string {
  const t = decodeTcb(reportedTcb, product);
  const hw = hwIdForProduct(chipId, product).toString('hex');
  const q = `${product === 'turin' ? `fmcSPL=${t.fmc ?? 0}&` : ''}blSPL=${t.bootloader}&teeSPL=${t.tee}&snpSPL=${t.snp}&ucodeSPL=${t.microcode}`;
  return `${baseUrl.replace(/\/+$/, '')}/vcek/v1/${PRODUCT_TITLE[product]}/${hw}?${q}`;
}

export function crlFileName(dir: string, product: SnpProduct, kind: SnpSigningKey): string {
  return join(dir, `crl_${kind}_${product}.der`);
}

export function kdsCrlUrl(baseUrl: string, product: SnpProduct, kind: SnpSigningKey): string {
  return `${baseUrl.replace(/\/+$/, '')}/${kind}/v1/${PRODUCT_TITLE[product]}/crl`;
}

export function kdsChainUrl(baseUrl: string, product: SnpProduct, kind: SnpSigningKey): string {
  return `${baseUrl.replace(/\/+$/, '')}/${kind}/v1/${PRODUCT_TITLE[product]}/cert_chain`;
}

const kdsFailed = (message: string, cause?: unknown): SigilError =>
  new SigilError('sev.kds_fetch_failed', message, { status: 502, ...(cause === undefined ? {} : { cause }) });

/** Drop an answer's body unread (404, HTTP errors). */
async function discardBody(res: KdsResponse): Promise<void> {
  try {
    await res.body?.cancel();
  } catch {
    // nothing to release
  }
}

/**
 * Read a body of at most `max` bytes. Past `max` the read stops: the request is aborted and the
 * stream cancelled, so an oversized answer costs at most `max` bytes plus one chunk.
 */
async function readCapped(res: KdsResponse, max: number, abort: AbortController, url: string): Promise<Buffer> {
  if (!res.body) return Buffer.alloc(0);
  const reader = res.body.getReader();
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    let step: Awaited<ReturnType<typeof reader.read>>;
    try {
      step = await reader.read();
    } catch (e) {
      throw kdsFailed(`AMD KDS answer for ${url} could not be read: ${errorMessage(e)}`, e);
    }
    if (step.done) break;
    const chunk: unknown = step.value;
    if (!(chunk instanceof Uint8Array)) {
      abort.abort();
      await reader.cancel().catch(() => undefined);
      throw kdsFailed(`AMD KDS answer for ${url} is not a byte stream`);
    }
    total += chunk.byteLength;
    if (total > max) {
      abort.abort();
      await reader.cancel().catch(() => undefined);
      throw kdsFailed(`AMD KDS answer for ${url} is larger than ${max} bytes; stopped reading it`);
    }
    chunks.push(Buffer.from(chunk));
  }
  return Buffer.concat(chunks, total);
}

async function kdsGet(fetchImpl: FetchLike, url: string): Promise<Buffer | undefined> {
  // One controller for the timeout (connection and body) and for stopping an oversized answer.
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(new Error(`no complete answer within ${KDS_TIMEOUT_MS} ms`)), KDS_TIMEOUT_MS);
  try {
    let res: KdsResponse;
    try {
      // Redirects are not followed: one would take the request off `baseUrl` (to plain http://, or
      // to any host the answer names) and is refused below as an HTTP error like any non-2xx.
      res = await fetchImpl(url, { signal: abort.signal, redirect: 'manual' });
    } catch (e) {
      throw kdsFailed(`AMD KDS request ${url} failed: ${errorMessage(e)}`, e);
    }
    if (res.status === 404) {
      await discardBody(res);
      return undefined;
    }
    if (!res.ok) {
      await discardBody(res);
      throw kdsFailed(`AMD KDS answered HTTP ${res.status} for ${url}`);
    }
    const declared = res.headers.get('content-length')?.trim();
    if (declared !== undefined && /^\d+$/.test(declared) && Number(declared) > MAX_KDS_BYTES) {
      abort.abort();
      await discardBody(res);
      throw kdsFailed(`AMD KDS answer for ${url} declares ${declared} bytes (Content-Length), more than ${MAX_KDS_BYTES}; not read`);
    }
    const body = await readCapped(res, MAX_KDS_BYTES, abort, url);
    if (body.length === 0) throw kdsFailed(`AMD KDS answer for ${url} is empty`);
    return body;
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Whether a VCEK fetched for (`product`, `chipId`, `reportedTcb`) is a VCEK for exactly that: its
 * hwID equals the CHIP_ID in the product's form, its SPLs equal the TCB, and it names no other
 * product line. Only such a VCEK may be cached under that key; anything else (another chip's
 * genuine VCEK, another TCB's, unparsable bytes) is not.
 */
function vcekFitsRequest(der: Buffer, product: SnpProduct, chipId: Buffer, reportedTcb: Buffer): boolean {
  try {
    const leaf = parseSevCert(der, 'KDS VCEK');
    const amd = parseAmdExtensions(leaf);
    if (!amd.hwId || amd.cspId !== undefined) return false;
    if (!amd.hwId.equals(hwIdForProduct(chipId, product))) return false;
    const named = productFromEndorsementCert(leaf, amd);
    if (named !== undefined && named !== product) return false;
    return endorsementTcb(amd, product, 'VCEK').equals(reportedTcb);
  } catch {
    return false;
  }
}

export interface CollateralSourceOptions {
  dir?: string;
  kds?: KdsOptions;
  /** Injected for tests; defaults to the global fetch. */
  fetch?: FetchLike;
  /** Called when writing verified certificates to the cache fails (the attestation still proceeds). */
  onCacheWriteError?: (path: string, e: unknown) => void;
  /** Milliseconds clock for the rate limit and the 404 memory (tests). Default Date.now. */
  clock?: () => number;
}

/** Certificates found by a lookup. */
export interface CollateralHit {
  /** DER certificates (one VCEK, or ASK/ASVK then ARK). */
  ders: Buffer[];
  /** True when they were fetched from AMD KDS by this lookup: not yet verified, not yet cached. */
  fetched: boolean;
  /**
   * Cache fetched certificates (collateral directory and memory) for later lookups. Call only after
   * they verified against the pinned ARK. No-op for certificates that came from a cache, and for a
   * fetched VCEK that is not the requested chip's at the requested TCB.
   */
  persist(): Promise<void>;
}

function remember<K, V>(map: Map<K, V>, key: K, value: V, max: number): void {
  map.delete(key);
  if (map.size >= max) {
    const oldest = map.keys().next();
    if (!oldest.done) map.delete(oldest.value);
  }
  map.set(key, value);
}

const noPersist = async (): Promise<void> => undefined;

/** Looks up VCEKs and ASK/ASVK+ARK chains in memory and the cache directory, then (optionally) AMD KDS. */
export class SnpCollateralSource {
  private readonly dir: string | undefined;
  private readonly kds: KdsOptions | undefined;
  private readonly fetchImpl: FetchLike;
  private readonly onCacheWriteError: (path: string, e: unknown) => void;
  private readonly clock: () => number;
  /** Verified certificates by cache key (`vcek/<product>/<hwId>-<tcb>`, `chain/<product>/<kind>`). */
  private readonly memory = new Map<string, Buffer[]>();
  /** Verified CRLs by `crl/<product>/<kind>`, with their nextUpdate (ms). */
  private readonly crlMemory = new Map<string, { der: Buffer; nextUpdate: number }>();
  /** KDS URLs that answered 404 → when that answer expires. */
  private readonly notFound = new Map<string, number>();
  private readonly inflight = new Map<string, Promise<Buffer | undefined>>();
  private readonly ratePerMinute: number;
  private tokens: number;
  private tokensAt: number;

  constructor(opts: CollateralSourceOptions) {
    this.dir = opts.dir;
    this.kds = opts.kds?.enabled ? opts.kds : undefined;
    this.fetchImpl = opts.fetch ?? ((url, init) => fetch(url, init));
    this.onCacheWriteError = opts.onCacheWriteError ?? (() => undefined);
    this.clock = opts.clock ?? Date.now;
    if (this.kds) checkKdsBaseUrl(this.kds.baseUrl);
    const rate = opts.kds?.maxRequestsPerMinute ?? DEFAULT_KDS_MAX_REQUESTS_PER_MINUTE;
    if (!Number.isInteger(rate) || rate < 1) throw new SigilError('sev.config_invalid', `kds.maxRequestsPerMinute must be a positive integer, got ${rate}`);
    this.ratePerMinute = rate;
    this.tokens = rate;
    this.tokensAt = this.clock();
  }

  get configured(): boolean {
    return this.dir !== undefined || this.kds !== undefined;
  }

  private async writeCache(path: string, data: Buffer | string): Promise<void> {
    try {
      await writeAtomic(path, data);
    } catch (e) {
      this.onCacheWriteError(path, e);
    }
  }

  /** Take one request token or refuse (sev.kds_rate_limited). */
  private takeToken(url: string): void {
    const now = this.clock();
    const elapsed = Math.max(0, now - this.tokensAt);
    this.tokens = Math.min(this.ratePerMinute, this.tokens + (elapsed * this.ratePerMinute) / 60_000);
    this.tokensAt = now;
    if (this.tokens < 1) {
      throw new SigilError('sev.kds_rate_limited', `AMD KDS request ${url} refused: more than ${this.ratePerMinute} KDS requests per minute (kds.maxRequestsPerMinute)`, {
        status: 503,
      });
    }
    this.tokens -= 1;
  }

  /** GET from KDS through the 404 memory, the in-flight sharing and the rate limit. */
  private kdsFetch(url: string): Promise<Buffer | undefined> {
    const until = this.notFound.get(url);
    if (until !== undefined) {
      if (until > this.clock()) return Promise.resolve(undefined);
      this.notFound.delete(url);
    }
    const running = this.inflight.get(url);
    if (running) return running;
    this.takeToken(url);
    const p = kdsGet(this.fetchImpl, url)
      .then((body) => {
        if (!body) remember(this.notFound, url, this.clock() + KDS_NOT_FOUND_TTL_MS, NOT_FOUND_MAX);
        return body;
      })
      .finally(() => this.inflight.delete(url));
    this.inflight.set(url, p);
    return p;
  }

  private static cached(ders: Buffer[]): CollateralHit {
    return { ders: [...ders], fetched: false, persist: noPersist };
  }

  private fetchedHit(key: string, ders: Buffer[], path: string | undefined, data: Buffer | string, cacheable = true): CollateralHit {
    return {
      ders,
      fetched: true,
      persist: async () => {
        if (!cacheable) return;
        remember(this.memory, key, [...ders], MEMORY_CACHE_MAX);
        if (path !== undefined) await this.writeCache(path, data);
      },
    };
  }

  /** VCEK for a chip at a TCB, trying each candidate product line in order (memory, directory, then KDS). */
  async lookupVcek(products: readonly SnpProduct[], chipId: Buffer, reportedTcb: Buffer): Promise<CollateralHit | undefined> {
    if (chipId.every((b) => b === 0)) return undefined; // masked CHIP_ID: nothing to look up by
    const key = (p: SnpProduct) => `vcek/${p}/${hwIdForProduct(chipId, p).toString('hex')}-${tcbHex(reportedTcb)}`;
    for (const p of products) {
      const mem = this.memory.get(key(p));
      if (mem) return SnpCollateralSource.cached(mem);
      if (this.dir) {
        const hit = await readOptional(vcekFileName(this.dir, p, chipId, reportedTcb));
        if (hit) return SnpCollateralSource.cached([certificatesFromFile(hit, 'cached VCEK')[0]!]);
      }
    }
    if (!this.kds) return undefined;
    for (const p of products) {
      const body = await this.kdsFetch(kdsVcekUrl(this.kds.baseUrl, p, chipId, reportedTcb));
      if (!body) continue;
      const der = certificatesFromFile(body, 'KDS VCEK')[0]!;
      // Returned either way (verification then refuses a VCEK of another chip or TCB), but cached
      // under this chip's key only if it is this chip's VCEK at this TCB.
      const fits = vcekFitsRequest(der, p, chipId, reportedTcb);
      return this.fetchedHit(key(p), [der], this.dir ? vcekFileName(this.dir, p, chipId, reportedTcb) : undefined, der, fits);
    }
    return undefined;
  }

  /** ASK+ARK (VCEK) or ASVK+ARK (VLEK) for a product line (memory, directory, then KDS). */
  async lookupChain(product: SnpProduct, kind: SnpSigningKey): Promise<CollateralHit | undefined> {
    const key = `chain/${product}/${kind}`;
    const mem = this.memory.get(key);
    if (mem) return SnpCollateralSource.cached(mem);
    if (this.dir) {
      const hit = await readOptional(chainFileName(this.dir, product, kind));
      if (hit) return SnpCollateralSource.cached(pemToDerList(hit.toString('latin1'), chainFileName(this.dir, product, kind)));
    }
    if (!this.kds) return undefined;
    const body = await this.kdsFetch(kdsChainUrl(this.kds.baseUrl, product, kind));
    if (!body) return undefined;
    const text = body.toString('latin1');
    const ders = pemToDerList(text, 'KDS cert_chain');
    return this.fetchedHit(key, ders, this.dir ? chainFileName(this.dir, product, kind) : undefined, text);
  }

  /**
   * AMD's CRL for a product line and key kind (memory, directory, then KDS), or undefined. A cached
   * CRL is used only while `now` is not past its nextUpdate; a stale one is returned only when KDS
   * is off or has none. `ders[0]` is the CRL as stored or served (DER, or PEM from a file); the
   * caller verifies it (crl.ts) and then runs persist(). `fromKds`: skip memory and directory (the
   * cached copy did not verify); undefined when KDS is off or has none.
   */
  async lookupCrl(product: SnpProduct, kind: SnpSigningKey, now: Date, opts: { fromKds?: boolean } = {}): Promise<CollateralHit | undefined> {
    const key = `crl/${product}/${kind}`;
    const t = now.getTime();
    const mem = opts.fromKds ? undefined : this.crlMemory.get(key);
    if (mem) {
      if (mem.nextUpdate >= t) return SnpCollateralSource.cached([mem.der]);
      this.crlMemory.delete(key);
    }
    let stale: Buffer | undefined;
    const path = this.dir ? crlFileName(this.dir, product, kind) : undefined;
    if (path && !opts.fromKds) {
      const hit = await readOptional(path);
      if (hit) {
        const next = amdCrlNextUpdate(hit);
        if (next !== undefined && next.getTime() >= t) return SnpCollateralSource.cached([hit]);
        stale = hit;
      }
    }
    if (this.kds) {
      const body = await this.kdsFetch(kdsCrlUrl(this.kds.baseUrl, product, kind));
      if (body) {
        return {
          ders: [body],
          fetched: true,
          persist: async () => {
            const next = amdCrlNextUpdate(body);
            if (next === undefined) return;
            remember(this.crlMemory, key, { der: body, nextUpdate: next.getTime() }, MEMORY_CACHE_MAX);
            if (path !== undefined) await this.writeCache(path, body);
          },
        };
      }
    }
    return stale ? SnpCollateralSource.cached([stale]) : undefined;
  }

  /** The VCEK's DER, or undefined. Fetched certificates are not cached: use lookupVcek and persist() after verifying. */
  async vcek(products: readonly SnpProduct[], chipId: Buffer, reportedTcb: Buffer): Promise<Buffer | undefined> {
    return (await this.lookupVcek(products, chipId, reportedTcb))?.ders[0];
  }

  /** The chain's DERs, or undefined. Fetched certificates are not cached: use lookupChain and persist() after verifying. */
  async chain(product: SnpProduct, kind: SnpSigningKey): Promise<Buffer[] | undefined> {
    return (await this.lookupChain(product, kind))?.ders;
  }
}
