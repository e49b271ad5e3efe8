/**
 * Intel collateral for TDX quotes (I/O, kept apart from the pure verifier): an offline directory
 * and, when enabled, Intel PCS (or a PCCS with the same v4 API). Nothing read here is trusted:
 * everything goes through verifyTdxCollateral / verifyTdxQuote against the pinned root.
 *
 * Directory layout (`collateralDir`), the PCS answers as received:
 *   tcbinfo-<fmspc>.json            body of GET /tdx/certification/v4/tcb?fmspc=<fmspc>
 *   qe-identity.json                body of GET /tdx/certification/v4/qe/identity
 *   tcb-signing-chain.pem           its TCB-Info-Issuer-Chain header (URL-decoded)
 *   pck-crl-<platform|processor>.der        GET /sgx/certification/v4/pckcrl?ca=<ca>&encoding=der
 *   pck-crl-issuer-chain-<ca>.pem   its SGX-PCK-CRL-Issuer-Chain header (URL-decoded)
 *   root-crl.der                    the Intel SGX Root CA CRL
 * A directory with none of a quote's files is "no collateral here"; one with only some of them is
 * refused (`tdx.collateral_incomplete`) rather than silently verified without revocation.
 *
 * PCS requests are made before the quote is verified (the collateral is what verifies it), so
 * they are guarded: a token bucket per source (`maxRequestsPerMinute`, over it →
 * `tdx.pcs_rate_limited`, no request), one fetch in flight per key, answers capped at 1 MiB and
 * 10 s, https only (http:// for loopback test servers). A lookup hands back `persist()`, which the
 * caller runs only after the collateral verified; it writes the directory (when configured) and a
 * memory cache that serves until the earliest nextUpdate of the set.
 */
import { mkdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import { replaceFileAtomicAsync } from '../util/atomic-file.js';
import { chainFromPem, clipText, parseIntelCert, parsePckExtensions } from './pki.js';
import { parseTdxQuote } from './quote.js';
import type { TdxCollateral } from './verify.js';

export const DEFAULT_PCS_BASE_URL = 'https://api.trustedservices.intel.com';
export const DEFAULT_ROOT_CRL_URL = 'https://certificates.trustedservices.intel.com/IntelSGXRootCA.der';
export const DEFAULT_PCS_MAX_REQUESTS_PER_MINUTE = 30;
const MAX_ANSWER_BYTES = 1024 * 1024;
const PCS_TIMEOUT_MS = 10_000;
const MEMORY_CACHE_MAX = 64;

export type PckCa = 'platform' | 'processor';

export interface CollateralKey {
  /** FMSPC of the PCK certificate, 12 hex digits. */
  fmspc: string;
  ca: PckCa;
}

/**
 * Which collateral a quote needs, read from its (not yet verified) PCK chain: the FMSPC and the CA
 * that issued the PCK certificate. Used only to pick files and URLs.
 */
export function collateralKeyOfQuote(quote: Uint8Array): CollateralKey {
  const q = parseTdxQuote(quote);
  const ders = chainFromPem(q.pckChainPem, 'pck');
  if (ders.length < 2) throw new SigilError('tdx.pck_chain_malformed', `pck chain must hold 3 certificates, found ${ders.length}`);
  const leaf = parseIntelCert(ders[0]!, 'pck chain certificate 0');
  const ca = parseIntelCert(ders[1]!, 'pck chain certificate 1');
  const kind: PckCa | undefined = ca.cn === 'Intel SGX PCK Platform CA' ? 'platform' : ca.cn === 'Intel SGX PCK Processor CA' ? 'processor' : undefined;
  if (!kind) throw new SigilError('tdx.pck_chain_malformed', `pck chain certificate 1 is "${clipText(ca.cn)}", not a PCK Platform or Processor CA`);
  return { fmspc: parsePckExtensions(leaf).fmspc.toString('hex'), ca: kind };
}

export function collateralFiles(dir: string, key: CollateralKey): Record<keyof TdxCollateral, string> {
  return {
    tcbInfo: join(dir, `tcbinfo-${key.fmspc}.json`),
    qeIdentity: join(dir, 'qe-identity.json'),
    tcbSigningChain: join(dir, 'tcb-signing-chain.pem'),
    pckCrl: join(dir, `pck-crl-${key.ca}.der`),
    pckCrlIssuerChain: join(dir, `pck-crl-issuer-chain-${key.ca}.pem`),
    rootCrl: join(dir, 'root-crl.der'),
  };
}

async function readOptional(path: string): Promise<Buffer | undefined> {
  try {
    return await readFile(path);
  } catch (e) {
    const code = typeof e === 'object' && e !== null && 'code' in e ? (e as { code: unknown }).code : '';
    if (code === 'ENOENT' || code === 'ENOTDIR') return undefined;
    throw new SigilError('tdx.collateral_unreadable', `cannot read collateral ${path}: ${errorMessage(e)}`, { cause: e, status: 500 });
  }
}

/** The collateral for `key` from a directory; undefined when none of its files are there. */
export async function loadCollateralDir(dir: string, key: CollateralKey): Promise<TdxCollateral | undefined> {
  const files = collateralFiles(dir, key);
  const names = Object.keys(files) as (keyof TdxCollateral)[];
  const data = await Promise.all(names.map((n) => readOptional(files[n])));
  const missing = names.filter((_, i) => data[i] === undefined);
  if (missing.length === names.length) return undefined;
  if (missing.length > 0) {
    throw new SigilError('tdx.collateral_incomplete', `collateral directory ${dir} lacks ${missing.map((n) => files[n]).join(', ')}`, { status: 500 });
  }
  const get = (n: keyof TdxCollateral): Buffer => data[names.indexOf(n)]!;
  return {
    tcbInfo: get('tcbInfo'),
    qeIdentity: get('qeIdentity'),
    tcbSigningChain: get('tcbSigningChain').toString('latin1'),
    pckCrl: get('pckCrl'),
    pckCrlIssuerChain: get('pckCrlIssuerChain').toString('latin1'),
    rootCrl: get('rootCrl'),
  };
}

/** Write the collateral files, each durably replaced (util/atomic-file.ts); they are public data (0644). */
export async function writeCollateralDir(dir: string, key: CollateralKey, c: TdxCollateral): Promise<void> {
  await mkdir(dir, { recursive: true });
  const files = collateralFiles(dir, key);
  for (const n of Object.keys(files) as (keyof TdxCollateral)[]) {
    await replaceFileAtomicAsync(files[n], c[n], 0o644);
  }
}

/** The part of a fetch Response used here (the global fetch's Response fits). */
export interface PcsResponse {
  ok: boolean;
  status: number;
  headers: { get(name: string): string | null };
  body: ReadableStream<Uint8Array> | null;
}
export type PcsFetch = (url: string, init: { signal: AbortSignal }) => Promise<PcsResponse>;

export interface PcsOptions {
  baseUrl?: string;
  rootCrlUrl?: string;
  maxRequestsPerMinute?: number;
}

function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(hostname);
}

/** https:// only (http:// for a loopback test server), no credentials, query or fragment → tdx.config_invalid. */
export function checkPcsUrl(url: string, what: string): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new SigilError('tdx.config_invalid', `${what} "${url}" is not a valid URL`);
  }
  if (u.protocol !== 'https:' && !(u.protocol === 'http:' && isLoopbackHost(u.hostname))) {
    throw new SigilError('tdx.config_invalid', `${what} "${url}" must use https:// (http:// only for a loopback host)`);
  }
  if (u.username !== '' || u.password !== '' || u.search !== '' || u.hash !== '') throw new SigilError('tdx.config_invalid', `${what} "${url}" must not carry credentials, a query or a fragment`);
}

const pcsFailed = (message: string, cause?: unknown): SigilError => new SigilError('tdx.pcs_fetch_failed', message, { status: 502, ...(cause === undefined ? {} : { cause }) });

async function readCapped(res: PcsResponse, abort: AbortController, url: string): Promise<Buffer> {
  if (!res.body) return Buffer.alloc(0);
  const reader = res.body.getReader();
  const chunks: Buffer[] = [];
  let total = 0;
  for (;;) {
    const step = await reader.read().catch((e: unknown) => {
      throw pcsFailed(`Intel PCS answer for ${url} could not be read: ${errorMessage(e)}`, e);
    });
    if (step.done) break;
    total += step.value.byteLength;
    if (total > MAX_ANSWER_BYTES) {
      abort.abort();
      await reader.cancel().catch(() => undefined);
      throw pcsFailed(`Intel PCS answer for ${url} is larger than ${MAX_ANSWER_BYTES} bytes; stopped reading it`);
    }
    chunks.push(Buffer.from(step.value));
  }
  return Buffer.concat(chunks, total);
}

interface Answer {
  body: Buffer;
  header?: string;
}

interface CacheEntry {
  collateral: TdxCollateral;
  until: number;
}

export interface CollateralHit {
  collateral: TdxCollateral;
  source: 'memory' | 'dir' | 'pcs';
  /** Store it (directory and memory cache) — call only after it verified. `validUntil` = earliest nextUpdate. */
  persist(validUntil: Date): Promise<void>;
}

export interface TdxCollateralSourceOptions {
  dir?: string;
  /** Intel PCS / PCCS; absent = offline only. */
  pcs?: PcsOptions;
  fetch?: PcsFetch;
  /** Clock for the rate limiter and memory cache (tests). */
  nowMs?: () => number;
}

export class TdxCollateralSource {
  private readonly memory = new Map<string, CacheEntry>();
  private readonly inflight = new Map<string, Promise<TdxCollateral>>();
  private tokens: number;
  private last: number;
  private readonly rate: number;
  private readonly fetchImpl: PcsFetch;
  private readonly nowMs: () => number;
  /** PCS requests made (for tests and metrics). */
  requests = 0;

  constructor(private readonly opts: TdxCollateralSourceOptions) {
    this.nowMs = opts.nowMs ?? Date.now;
    this.rate = opts.pcs?.maxRequestsPerMinute ?? DEFAULT_PCS_MAX_REQUESTS_PER_MINUTE;
    if (!Number.isInteger(this.rate) || this.rate < 1 || this.rate > 6000) throw new SigilError('tdx.config_invalid', 'pcs.maxRequestsPerMinute must be an integer 1..6000');
    this.tokens = this.rate;
    this.last = this.nowMs();
    if (opts.pcs) {
      checkPcsUrl(opts.pcs.baseUrl ?? DEFAULT_PCS_BASE_URL, 'pcs.baseUrl');
      checkPcsUrl(opts.pcs.rootCrlUrl ?? DEFAULT_ROOT_CRL_URL, 'pcs.rootCrlUrl');
    }
    this.fetchImpl = opts.fetch ?? ((url, init) => fetch(url, init) as Promise<PcsResponse>);
  }

  /** Whether PCS is enabled (a refused directory copy can be replaced). */
  get online(): boolean {
    return this.opts.pcs !== undefined;
  }

  get configured(): boolean {
    return this.opts.dir !== undefined || this.opts.pcs !== undefined;
  }

  private take(): void {
    const now = this.nowMs();
    this.tokens = Math.min(this.rate, this.tokens + ((now - this.last) / 60_000) * this.rate);
    this.last = now;
    if (this.tokens < 1) throw new SigilError('tdx.pcs_rate_limited', `Intel PCS request budget (${this.rate} per minute) is used up; no request made`, { status: 503 });
    this.tokens -= 1;
  }

  private async get(url: string, header?: string): Promise<Answer> {
    this.take();
    this.requests++;
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(new Error(`no complete answer within ${PCS_TIMEOUT_MS} ms`)), PCS_TIMEOUT_MS);
    try {
      let res: PcsResponse;
      try {
        res = await this.fetchImpl(url, { signal: abort.signal });
      } catch (e) {
        throw pcsFailed(`Intel PCS request ${url} failed: ${errorMessage(e)}`, e);
      }
      if (!res.ok) {
        await res.body?.cancel().catch(() => undefined);
        throw pcsFailed(`Intel PCS answered ${res.status} for ${url}`);
      }
      const len = Number(res.headers.get('content-length') ?? '0');
      if (len > MAX_ANSWER_BYTES) {
        abort.abort();
        throw pcsFailed(`Intel PCS answer for ${url} is ${len} bytes, more than ${MAX_ANSWER_BYTES}`);
      }
      const body = await readCapped(res, abort, url);
      if (header === undefined) return { body };
      const raw = res.headers.get(header);
      if (!raw) throw pcsFailed(`Intel PCS answer for ${url} has no ${header} header`);
      let decoded: string;
      try {
        decoded = decodeURIComponent(raw);
      } catch (e) {
        throw pcsFailed(`Intel PCS ${header} header is not URL-encoded PEM`, e);
      }
      return { body, header: decoded };
    } finally {
      clearTimeout(timer);
    }
  }

  private async fetchSet(key: CollateralKey): Promise<TdxCollateral> {
    const base = (this.opts.pcs!.baseUrl ?? DEFAULT_PCS_BASE_URL).replace(/\/+$/, '');
    const tcb = await this.get(`${base}/tdx/certification/v4/tcb?fmspc=${key.fmspc}`, 'TCB-Info-Issuer-Chain');
    const qe = await this.get(`${base}/tdx/certification/v4/qe/identity`, 'SGX-Enclave-Identity-Issuer-Chain');
    const crl = await this.get(`${base}/sgx/certification/v4/pckcrl?ca=${key.ca}&encoding=der`, 'SGX-PCK-CRL-Issuer-Chain');
    const root = await this.get(this.opts.pcs!.rootCrlUrl ?? DEFAULT_ROOT_CRL_URL);
    if (qe.header !== tcb.header) throw pcsFailed('Intel PCS gave the QE Identity and the TCB Info different issuer chains');
    return { tcbInfo: tcb.body, qeIdentity: qe.body, tcbSigningChain: tcb.header!, pckCrl: crl.body, pckCrlIssuerChain: crl.header!, rootCrl: root.body };
  }

  /**
   * Collateral for `key`: memory cache, then the directory, then PCS (when enabled). `fresh`
   * skips the memory cache and the directory (their copy was refused as expired).
   */
  async lookup(key: CollateralKey, fresh = false): Promise<CollateralHit | undefined> {
    if (!/^[0-9a-f]{12}$/.test(key.fmspc)) throw new SigilError('tdx.pck_extension_invalid', `FMSPC ${key.fmspc} is not 12 hex digits`);
    const id = `${key.fmspc}/${key.ca}`;
    const persist = (c: TdxCollateral, toDir: boolean) => async (validUntil: Date): Promise<void> => {
      if (this.memory.size >= MEMORY_CACHE_MAX) this.memory.delete(this.memory.keys().next().value!);
      this.memory.set(id, { collateral: c, until: validUntil.getTime() });
      if (toDir && this.opts.dir !== undefined) await writeCollateralDir(this.opts.dir, key, c);
    };
    const mem = fresh ? undefined : this.memory.get(id);
    if (mem && this.nowMs() <= mem.until) return { collateral: mem.collateral, source: 'memory', persist: async () => undefined };
    if (this.opts.dir !== undefined && !fresh) {
      const c = await loadCollateralDir(this.opts.dir, key);
      if (c) return { collateral: c, source: 'dir', persist: persist(c, false) };
    }
    if (!this.opts.pcs) return undefined;
    let p = this.inflight.get(id);
    if (!p) {
      p = this.fetchSet(key).finally(() => this.inflight.delete(id));
      this.inflight.set(id, p);
    }
    const c = await p;
    return { collateral: c, source: 'pcs', persist: persist(c, true) };
  }
}
