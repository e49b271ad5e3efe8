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
 * Fetched certificates are written into the directory (when one is configured) for next time.
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

export interface KdsOptions {
  enabled: boolean;
  baseUrl: string;
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
  /** Called when writing fetched certificates to the cache fails (the attestation still proceeds). */
  onCacheWriteError?: (path: string, e: unknown) => void;
}

/** Looks up VCEKs and ASK/ASVK+ARK chains in the cache directory, then (optionally) AMD KDS. */
export class SnpCollateralSource {
  private readonly dir: string | undefined;
  private readonly kds: KdsOptions | undefined;
  private readonly fetchImpl: FetchLike;
  private readonly onCacheWriteError: (path: string, e: unknown) => void;

  constructor(opts: CollateralSourceOptions) {
    this.dir = opts.dir;
    this.kds = opts.kds?.enabled ? opts.kds : undefined;
    this.fetchImpl = opts.fetch ?? ((url, init) => fetch(url, init));
    this.onCacheWriteError = opts.onCacheWriteError ?? (() => undefined);
  }

  get configured(): boolean {
    return this.dir !== undefined || this.kds !== undefined;
  }

  private async cache(path: string, data: Buffer | string): Promise<void> {
    try {
      await writeAtomic(path, data);
    } catch (e) {
      this.onCacheWriteError(path, e);
    }
  }

  /** VCEK for a chip at a TCB, trying each candidate product line in order. */
  async vcek(products: readonly SnpProduct[], chipId: Buffer, reportedTcb: Buffer): Promise<Buffer | undefined> {
    if (chipId.every((b) => b === 0)) return undefined; // masked CHIP_ID: nothing to look up by
    for (const p of products) {
      if (this.dir) {
        const hit = await readOptional(vcekFileName(this.dir, p, chipId, reportedTcb));
        if (hit) return certificatesFromFile(hit, 'cached VCEK')[0];
      }
    }
    if (!this.kds) return undefined;
    for (const p of products) {
      const body = await kdsGet(this.fetchImpl, kdsVcekUrl(this.kds.baseUrl, p, chipId, reportedTcb));
      if (!body) continue;
      const der = certificatesFromFile(body, 'KDS VCEK')[0]!;
      if (this.dir) await this.cache(vcekFileName(this.dir, p, chipId, reportedTcb), der);
      return der;
    }
    return undefined;
  }

  /** ASK+ARK (VCEK) or ASVK+ARK (VLEK) for a product line. */
  async chain(product: SnpProduct, kind: SnpSigningKey): Promise<Buffer[] | undefined> {
    if (this.dir) {
      const hit = await readOptional(chainFileName(this.dir, product, kind));
      if (hit) return pemToDerList(hit.toString('latin1'), chainFileName(this.dir, product, kind));
    }
    if (!this.kds) return undefined;
    const body = await kdsGet(this.fetchImpl, kdsChainUrl(this.kds.baseUrl, product, kind));
    if (!body) return undefined;
    const text = body.toString('latin1');
    const ders = pemToDerList(text, 'KDS cert_chain');
    if (this.dir) await this.cache(chainFileName(this.dir, product, kind), text);
    return ders;
  }
}
