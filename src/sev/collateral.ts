/**
 * SEV-SNP collateral for the verifier (I/O, kept apart from the pure verifier): a local cache
 * directory and, when enabled, AMD KDS. Nothing read here is trusted — every certificate still
 * goes through verifyEndorsementChain against the pinned ARK.
 *
 * Directory layout (`collateralDir`):
 *   <dir>/<product>/<hwIdHex>-<reportedTcbHex>.der   VCEK (hwID = 64-byte CHIP_ID; 8 bytes on Turin)
 *   <dir>/ask_ark_<product>.pem                        ASK then ARK
 *   <dir>/asvk_ark_<product>.pem                       ASVK then ARK (VLEK chains)
 * KDS (off by default; needs the network):
 *   GET <base>/vcek/v1/<Product>/<hwIdHex>?[fmcSPL=..&]blSPL=..&teeSPL=..&snpSPL=..&ucodeSPL=..  → VCEK DER
 *   GET <base>/vcek/v1/<Product>/cert_chain, <base>/vlek/v1/<Product>/cert_chain               → PEM
 * Nothing fetched from KDS is cached by the lookup itself: lookupVcek/lookupChain hand back a
 * `persist()` that the caller runs only once the certificates verified against the pinned ARK; it
 * writes them into the directory (when one is configured) and a bounded in-memory cache.
 *
 * KDS requests are guarded, because the request is made before the report signature can be checked
 * (that needs the VCEK being fetched), so a forged report picks the CHIP_ID and TCB in the URL:
 * a token bucket caps requests per minute (`maxRequestsPerMinute`, over the limit →
 * sev.kds_rate_limited), a 404 is remembered for 10 minutes per URL, and concurrent requests for one
 * URL share a single fetch.
 */
import { mkdir, readFile, rename, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { SigilError } from '../errors.js';
import { certificatesFromFile, pemToDerList } from './certs.js';
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

export type FetchLike = (url: string, init: { signal: AbortSignal; headers?: Record<string, string> }) => Promise<{
  ok: boolean;
  status: number;
  arrayBuffer(): Promise<ArrayBuffer>;
}>;

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
    throw new SigilError('sev.collateral_unreadable', `cannot read collateral ${path}: ${e instanceof Error ? e.message : String(e)}`, { cause: e, status: 500 });
  }
}

/** Write atomically (temp file + rename) so a concurrent reader never sees half a certificate. */
async function writeAtomic(path: string, data: Buffer | string): Promise<void> {
  await mkdir(dirname(path), { recursive: true });
  const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
  await writeFile(tmp, data);
  await rename(tmp, path);
}

export function kdsVcekUrl(baseUrl: string, product: SnpProduct, chipId: Buffer, reportedTcb: Buffer): string {
  const t = decodeTcb(reportedTcb, product);
  const hw = hwIdForProduct(chipId, product).toString('hex');
  const q = `${product === 'turin' ? `fmcSPL=${t.fmc ?? 0}&` : ''}blSPL=${t.bootloader}&teeSPL=${t.tee}&snpSPL=${t.snp}&ucodeSPL=${t.microcode}`;
  return `${baseUrl.replace(/\/+$/, '')}/vcek/v1/${PRODUCT_TITLE[product]}/${hw}?${q}`;
}

export function kdsChainUrl(baseUrl: string, product: SnpProduct, kind: SnpSigningKey): string {
  return `${baseUrl.replace(/\/+$/, '')}/${kind}/v1/${PRODUCT_TITLE[product]}/cert_chain`;
}

async function kdsGet(fetchImpl: FetchLike, url: string): Promise<Buffer | undefined> {
  let res: Awaited<ReturnType<FetchLike>>;
  try {
    res = await fetchImpl(url, { signal: AbortSignal.timeout(KDS_TIMEOUT_MS) });
  } catch (e) {
    throw new SigilError('sev.kds_fetch_failed', `AMD KDS request ${url} failed: ${e instanceof Error ? e.message : String(e)}`, { cause: e, status: 502 });
  }
  if (res.status === 404) return undefined;
  if (!res.ok) throw new SigilError('sev.kds_fetch_failed', `AMD KDS answered HTTP ${res.status} for ${url}`, { status: 502 });
  const body = Buffer.from(await res.arrayBuffer());
  if (body.length === 0 || body.length > MAX_KDS_BYTES) {
    throw new SigilError('sev.kds_fetch_failed', `AMD KDS answer for ${url} is ${body.length} bytes (expected 1..${MAX_KDS_BYTES})`, { status: 502 });
  }
  return body;
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
   * they verified against the pinned ARK. No-op for certificates that came from a cache.
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

  private fetchedHit(key: string, ders: Buffer[], path: string | undefined, data: Buffer | string): CollateralHit {
    return {
      ders,
      fetched: true,
      persist: async () => {
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
      return this.fetchedHit(key(p), [der], this.dir ? vcekFileName(this.dir, p, chipId, reportedTcb) : undefined, der);
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

  /** The VCEK's DER, or undefined. Fetched certificates are not cached: use lookupVcek and persist() after verifying. */
  async vcek(products: readonly SnpProduct[], chipId: Buffer, reportedTcb: Buffer): Promise<Buffer | undefined> {
    return (await this.lookupVcek(products, chipId, reportedTcb))?.ders[0];
  }

  /** The chain's DERs, or undefined. Fetched certificates are not cached: use lookupChain and persist() after verifying. */
  async chain(product: SnpProduct, kind: SnpSigningKey): Promise<Buffer[] | undefined> {
    return (await this.lookupChain(product, kind))?.ders;
  }
}
