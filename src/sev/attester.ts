/**
 * SEV-SNP evidence collection inside a guest (the attester's I/O; kept thin).
 *
 * 1. Linux configfs-tsm through the shared collector (src/util/configfs-tsm.ts): `outblob` is the
 *    report, `auxblob` the GHCB certificate table; `provider` must read `sev_guest`.
 * 2. Fallback: /dev/sev-guest SNP_GET_EXT_REPORT through the native addon (`loadSys()`),
 *    imported lazily so this module loads on machines without the addon.
 *
 * Testing: the configfs path is exercised against an in-memory filesystem (`TsmFs`) that mimics
 * the kernel's behaviour (generation counter bumped on every write, outblob produced on read,
 * provider file); it cannot prove what a real kernel does, only that this code follows the
 * documented protocol. The ioctl path has no test outside an SEV-SNP guest (no /dev/sev-guest here).
 */
import { SigilError, errorMessage } from '../errors.js';
import { DEFAULT_CONFIGFS_ROOT, type TsmFs, getTsmReport, nodeTsmFs } from '../util/configfs-tsm.js';
import { SNP_REPORT_SIZE } from './report.js';

export { DEFAULT_CONFIGFS_ROOT, nodeTsmFs, type TsmFs } from '../util/configfs-tsm.js';
export const DEFAULT_CERTS_BUFFER_LEN = 16384;

export interface SnpRawEvidence {
  /** The 0x4A0-byte attestation report. */
  report: Buffer;
  /** GHCB certificate table from the host (auxblob / ext-report certs), if any. */
  certTable?: Buffer;
  via: 'configfs' | 'ioctl';
}

/** Anything that can produce a report for 64 bytes of REPORT_DATA. */
export interface SnpReportSource {
  getReport(reportData: Buffer): Promise<SnpRawEvidence>;
}

export interface ConfigfsOptions {
  root?: string;
  /** VMPL to request (configfs `privlevel`); omitted = the kernel default. */
  privlevel?: number;
  fs?: TsmFs;
  /** Attempts when `generation` moves between write and read. Default 3. */
  maxAttempts?: number;
}

function ioFail(code: string, what: string, e: unknown): SigilError {
  const msg = errorMessage(e);
  return new SigilError(code, `${what}: ${msg}`, { cause: e, status: 500 });
}

function checkReportData(reportData: Buffer): void {
  if (!Buffer.isBuffer(reportData) || reportData.length !== 64) {
    throw new SigilError('sev.report_data_invalid', `REPORT_DATA must be 64 bytes, got ${Buffer.isBuffer(reportData) ? reportData.length : typeof reportData}`);
  }
}

function checkReportShape(report: Buffer, via: string): Buffer {
  if (report.length !== SNP_REPORT_SIZE) {
    throw new SigilError('sev.report_length', `${via} returned a ${report.length}-byte report, expected ${SNP_REPORT_SIZE}`, { status: 500 });
  }
  return report;
}

export async function configfsAvailable(root: string = DEFAULT_CONFIGFS_ROOT, fs: TsmFs = nodeTsmFs): Promise<boolean> {
  return fs.exists(root);
}

/** One report through configfs-tsm (the shared collector, provider `sev_guest`, with auxblob). */
export async function getReportViaConfigfs(reportData: Buffer, opts: ConfigfsOptions = {}): Promise<SnpRawEvidence> {
  checkReportData(reportData);
  const r = await getTsmReport({
    area: 'sev',
    provider: 'sev_guest',
    guestName: 'SEV-SNP',
    inblob: reportData,
    readAuxblob: true,
    ...(opts.root === undefined ? {} : { root: opts.root }),
    ...(opts.privlevel === undefined ? {} : { privlevel: opts.privlevel }),
    ...(opts.fs === undefined ? {} : { fs: opts.fs }),
    ...(opts.maxAttempts === undefined ? {} : { maxAttempts: opts.maxAttempts }),
  });
  const out: SnpRawEvidence = { report: checkReportShape(r.outblob, 'configfs-tsm outblob'), via: 'configfs' };
  if (r.auxblob) out.certTable = r.auxblob;
  return out;
}

/** The slice of the native addon this module uses (declared here so it compiles without src/native). */
interface SnpIoctl {
  snpGetExtReport(reportData: Buffer, vmpl: number, certsBufferLen: number): Promise<{ report: Buffer; certs: Buffer }>;
}

/**
 * One report through /dev/sev-guest SNP_GET_EXT_REPORT. Untested outside an SEV-SNP guest: it
 * needs the device and the built native addon.
 */
export async function getReportViaIoctl(reportData: Buffer, opts: { vmpl?: number; certsBufferLen?: number } = {}): Promise<SnpRawEvidence> {
  checkReportData(reportData);
  const spec = '../native/sys.js';
  let sys: SnpIoctl;
  try {
    const mod = (await import(spec)) as { loadSys(): SnpIoctl };
    sys = mod.loadSys();
  } catch (e) {
    if (e instanceof SigilError) throw e;
    throw ioFail('native.unavailable', 'the native addon (src/native/sys) could not be loaded for /dev/sev-guest', e);
  }
  const r = await sys.snpGetExtReport(reportData, opts.vmpl ?? 0, opts.certsBufferLen ?? DEFAULT_CERTS_BUFFER_LEN);
  const out: SnpRawEvidence = { report: checkReportShape(Buffer.from(r.report), '/dev/sev-guest'), via: 'ioctl' };
  if (r.certs.length > 0 && !r.certs.every((b) => b === 0)) out.certTable = Buffer.from(r.certs);
  return out;
}

export interface SnpSourceOptions {
  transport?: 'auto' | 'configfs' | 'ioctl';
  configfsRoot?: string;
  /** VMPL to request (configfs privlevel / ioctl vmpl). */
  privlevel?: number;
  certsBufferLen?: number;
  fs?: TsmFs;
}

/**
 * The default source: configfs-tsm when its root exists (auto), falling back to the ioctl when
 * configfs is absent or has no TSM provider; `transport` forces one of the two.
 */
export function createSnpReportSource(opts: SnpSourceOptions = {}): SnpReportSource {
  const transport = opts.transport ?? 'auto';
  const root = opts.configfsRoot ?? DEFAULT_CONFIGFS_ROOT;
  const fs = opts.fs ?? nodeTsmFs;
  const configfs = (rd: Buffer) =>
    getReportViaConfigfs(rd, { root, fs, ...(opts.privlevel === undefined ? {} : { privlevel: opts.privlevel }) });
  const ioctl = (rd: Buffer) =>
    getReportViaIoctl(rd, { vmpl: opts.privlevel ?? 0, ...(opts.certsBufferLen === undefined ? {} : { certsBufferLen: opts.certsBufferLen }) });
  return {
    async getReport(reportData: Buffer): Promise<SnpRawEvidence> {
      if (transport === 'configfs') return configfs(reportData);
      if (transport === 'ioctl') return ioctl(reportData);
      if (await fs.exists(root)) {
        try {
          return await configfs(reportData);
        } catch (e) {
          if (!(e instanceof SigilError) || e.code !== 'sev.configfs_unavailable') throw e;
        }
      }
      return ioctl(reportData);
    },
  };
}
