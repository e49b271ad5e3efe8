/**
 * Typed wrapper over build/Release/sigil_tpm.node (ESAPI via tpm2-tss). It moves TPM wire bytes
 * only; parsing them is src/tpm/'s job. Calls on one device run one at a time, in call order
 * (a promise chain here, and a per-context mutex in the addon). See docs/native.md.
 */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import { REBUILD_HINT, loadAddon, nativeDir } from './locate.js';

export type EkAlg = 'rsa' | 'ecc-p256' | 'ecc-p384';
export type PcrBank = 'sha1' | 'sha256' | 'sha384' | 'sha512';

export interface TpmDevice {
  /** Tries 0x01c00002 (RSA EK cert), 0x01c0000a (ECC P-256), then the high range 0x01c00012..0x01c0001c; returns the first present with its index, or null. */
  readEkCertificate(): Promise<{ nvIndex: number; der: Buffer } | null>;
  /** EK public (TPM2B_PUBLIC wire bytes): a persistent EK made from the TCG template if present, else CreatePrimary with it. Also selects this EK for createAk/loadAk/activateCredential. */
  getEkPublic(alg: EkAlg): Promise<Buffer>;
  /** Restricted signing AK (RSA-2048 RSASSA-SHA256 or ECC P-256 ECDSA-SHA256) created under the EK; TPM2B_PUBLIC and TPM2B_PRIVATE wire bytes. */
  createAk(alg: 'rsa' | 'ecc'): Promise<{ public: Buffer; private: Buffer }>;
  /** Loads a previously created AK under the EK and keeps it loaded; returns its Name (nameAlg ‖ digest). */
  loadAk(ak: { public: Buffer; private: Buffer }): Promise<{ name: Buffer }>;
  /** TPM2_ActivateCredential(AK, EK); inputs are TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET (with size prefixes); returns certInfo without size prefix. */
  activateCredential(credentialBlob: Buffer, encryptedSecret: Buffer): Promise<Buffer>;
  /** TPM2_Quote with the loaded AK; pcrSelection = TPML_PCR_SELECTION wire bytes; returns TPM2B_ATTEST (with size prefix) and TPMT_SIGNATURE wire bytes. */
  quote(pcrSelection: Buffer, qualifyingData: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
  /** TPM2_PCR_Read until every selected PCR is read; values in selection order. */
  pcrRead(pcrSelection: Buffer): Promise<{ bank: string; index: number; value: Buffer }[]>;
  close(): Promise<void>;
}

interface RawHandle {
  readEkCertificate(): Promise<{ nvIndex: number; der: Buffer } | null>;
  getEkPublic(alg: string): Promise<Buffer>;
  createAk(alg: string): Promise<{ public: Buffer; private: Buffer }>;
  loadAk(pub: Buffer, priv: Buffer): Promise<{ name: Buffer }>;
  activateCredential(blob: Buffer, secret: Buffer): Promise<Buffer>;
  quote(sel: Buffer, qd: Buffer): Promise<{ attest: Buffer; signature: Buffer }>;
  pcrRead(sel: Buffer): Promise<{ hashAlg: number; index: number; value: Buffer }[]>;
  transientHandles(): Promise<number[]>;
  close(): Promise<void>;
}

interface RawTpm {
  open(tcti: string): Promise<RawHandle>;
  decodeRc(rc: number): string;
}

/** Debian/Ubuntu runtime packages of the tpm2-tss libraries the addon links against. */
const TSS2_PACKAGES: Record<string, string> = {
  'libtss2-esys.so.0': 'libtss2-esys-3.0.2-0',
  'libtss2-tctildr.so.0': 'libtss2-tctildr0',
  'libtss2-mu.so.0': 'libtss2-mu0',
  'libtss2-rc.so.0': 'libtss2-rc0',
  'libtss2-sys.so.1': 'libtss2-sys1',
};

type Availability = { ok: true; raw: RawTpm } | { ok: false; reason: string };
let availability: Availability | undefined;

function probe(): Availability {
  const r = loadAddon<RawTpm>('sigil_tpm');
  if (r.ok) return { ok: true, raw: r.addon };
  if (r.missing === 'file') {
    let why = '';
    try {
      why = readFileSync(join(nativeDir(), 'sigil_tpm.disabled'), 'utf8').trim();
    } catch {
      // no marker: the build never ran or predates the marker
    }
    if (why !== '') return { ok: false, reason: `the TPM addon was not built: ${why}` };
    return { ok: false, reason: `the TPM addon ${r.path} was not built (no native build has run, or libtss2-dev was missing at install time); install libtss2-dev and ${REBUILD_HINT}` };
  }
  const lib = /(libtss2-[a-z0-9-]+\.so(?:\.\d+)*)/.exec(r.error)?.[1];
  if (lib !== undefined && /cannot open shared object|No such file/i.test(r.error)) {
    const pkg = TSS2_PACKAGES[lib];
    const install = pkg === undefined ? 'install the tpm2-tss library that provides it (Debian: libtss2-dev)' : `install the Debian package ${pkg} (or libtss2-dev)`;
    return { ok: false, reason: `${lib} not found: ${install} and rebuild with \`npm rebuild sigil\`` };
  }
  return { ok: false, reason: `the TPM addon ${r.path} failed to load (${r.error}); ${REBUILD_HINT}` };
}

function getAvailability(): Availability {
  availability ??= probe();
  return availability;
}

/** Whether the TPM native addon can be used here, and if not exactly what is missing. */
export function tpmAvailable(): { ok: true } | { ok: false; reason: string } {
  const a = getAvailability();
  return a.ok ? { ok: true } : { ok: false, reason: a.reason };
}

const HASH_BANKS: Record<number, PcrBank> = { 0x0004: 'sha1', 0x000b: 'sha256', 0x000c: 'sha384', 0x000d: 'sha512' };

/** The bank name for a TPM_ALG_ID, or `alg-0x…` for banks outside the four the contract names. */
export function bankName(hashAlg: number): string {
  return HASH_BANKS[hashAlg] ?? `alg-0x${hashAlg.toString(16).padStart(4, '0')}`;
}

/**
 * NV EK certificate areas are often larger than the certificate and padded (0x00 or 0xff). Cut
 * the bytes to the outer DER SEQUENCE's length when that length is well-formed and fits;
 * otherwise hand the bytes on unchanged for the certificate parser to reject.
 */
export function trimDer(buf: Buffer): Buffer {
  if (buf.length < 2 || buf[0] !== 0x30) return buf;
  const first = buf[1] as number;
  let len: number;
  let hdr: number;
  if (first < 0x80) {
    len = first;
    hdr = 2;
  } else {
    const n = first & 0x7f;
    if (n === 0 || n > 4 || buf.length < 2 + n) return buf;
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + (buf[2 + i] as number);
    hdr = 2 + n;
  }
  const total = hdr + len;
  return total <= buf.length ? buf.subarray(0, total) : buf;
}

interface NativeError {
  message: string;
  rc?: number;
  op?: string;
}

function toSigilError(e: unknown, what: string): SigilError {
  if (e instanceof SigilError) return e;
  const ne = e as NativeError;
  const msg = errorMessage(e);
  if (e instanceof TypeError || e instanceof RangeError || (typeof ne.op === 'string' && ne.op.startsWith('unmarshal'))) {
    return new SigilError('tpm.invalid_argument', `${what}: ${msg}`, { cause: e });
  }
  if (/the TPM context is closed/.test(msg)) return new SigilError('tpm.closed', `${what}: the TPM device was closed`, { cause: e, status: 500 });
  const details: Record<string, unknown> = {};
  if (typeof ne.rc === 'number') details.rc = ne.rc;
  if (typeof ne.op === 'string') details.op = ne.op;
  return new SigilError('tpm.device_error', `${what}: ${msg}`, { cause: e, status: 500, details });
}

class NativeTpmDevice implements TpmDevice {
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;

  constructor(
    private readonly raw: RawHandle,
    readonly tcti: string,
  ) {}

  /** Runs op after every earlier call on this device has settled. */
  private run<T>(what: string, op: () => Promise<T>): Promise<T> {
    const next = this.queue.then(
      () => op(),
      () => op(),
    );
    this.queue = next.catch(() => undefined);
    return next.catch((e: unknown) => {
      throw toSigilError(e, what);
    });
  }

  private guard(what: string): void {
    if (this.closed) throw new SigilError('tpm.closed', `${what}: the TPM device was closed`, { status: 500 });
  }

  readEkCertificate(): Promise<{ nvIndex: number; der: Buffer } | null> {
    return this.run('reading the EK certificate', async () => {
      this.guard('readEkCertificate');
      const r = await this.raw.readEkCertificate();
      return r === null ? null : { nvIndex: r.nvIndex, der: trimDer(r.der) };
    });
  }

  getEkPublic(alg: EkAlg): Promise<Buffer> {
    return this.run(`reading the ${alg} EK`, async () => {
      this.guard('getEkPublic');
      return this.raw.getEkPublic(alg);
    });
  }

  createAk(alg: 'rsa' | 'ecc'): Promise<{ public: Buffer; private: Buffer }> {
    return this.run(`creating a${alg === 'rsa' ? 'n RSA' : 'n ECC'} AK`, async () => {
      this.guard('createAk');
      return this.raw.createAk(alg);
    });
  }

  loadAk(ak: { public: Buffer; private: Buffer }): Promise<{ name: Buffer }> {
    return this.run('loading the AK', async () => {
      this.guard('loadAk');
      return this.raw.loadAk(ak.public, ak.private);
    });
  }

  activateCredential(credentialBlob: Buffer, encryptedSecret: Buffer): Promise<Buffer> {
    return this.run('activating the credential', async () => {
      this.guard('activateCredential');
      return this.raw.activateCredential(credentialBlob, encryptedSecret);
    });
  }

  quote(pcrSelection: Buffer, qualifyingData: Buffer): Promise<{ attest: Buffer; signature: Buffer }> {
    return this.run('quoting', async () => {
      this.guard('quote');
      return this.raw.quote(pcrSelection, qualifyingData);
    });
  }

  pcrRead(pcrSelection: Buffer): Promise<{ bank: string; index: number; value: Buffer }[]> {
    return this.run('reading PCRs', async () => {
      this.guard('pcrRead');
      const values = await this.raw.pcrRead(pcrSelection);
      return values.map((v) => ({ bank: bankName(v.hashAlg), index: v.index, value: v.value }));
    });
  }

  /** Transient object handles currently in the TPM (diagnostics; see transientHandles()). */
  transientHandles(): Promise<number[]> {
    return this.run('listing transient handles', async () => {
      this.guard('transientHandles');
      return this.raw.transientHandles();
    });
  }

  close(): Promise<void> {
    return this.run('closing the TPM device', async () => {
      if (this.closed) return;
      this.closed = true;
      await this.raw.close();
    });
  }
}

/**
 * Opens a TCTI by config string: "device:/dev/tpmrm0", "swtpm:host=127.0.0.1,port=2321",
 * "mssim:host=…,port=…". Throws SigilError('native.tpm_unavailable', …) when the TPM native addon is
 * not available, and SigilError('tpm.device_error', …) with the decoded TSS2 code when the TCTI
 * cannot be opened.
 */
export async function openTpm(tcti: string): Promise<TpmDevice> {
  const a = getAvailability();
  if (!a.ok) throw new SigilError('native.tpm_unavailable', a.reason, { status: 500 });
  if (typeof tcti !== 'string' || tcti === '') {
    throw new SigilError('tpm.invalid_argument', 'openTpm: tcti must be a TCTI config string such as "device:/dev/tpmrm0"');
  }
  try {
    return new NativeTpmDevice(await a.raw.open(tcti), tcti);
  } catch (e) {
    throw toSigilError(e, `opening TPM "${tcti}"`);
  }
}

/**
 * Transient object handles currently loaded in the TPM behind `dev` (a device from openTpm).
 * For leak checks: with the AK loaded and an EK re-created from its template this is at most two.
 */
export function transientHandles(dev: TpmDevice): Promise<number[]> {
  if (!(dev instanceof NativeTpmDevice)) throw new SigilError('tpm.invalid_argument', 'transientHandles: not a device from openTpm');
  return dev.transientHandles();
}

/** Human text for a TSS2_RC (Tss2_RC_Decode), or null when the TPM native addon is unavailable. */
export function decodeTpmRc(rc: number): string | null {
  const a = getAvailability();
  return a.ok ? a.raw.decodeRc(rc >>> 0) : null;
}
