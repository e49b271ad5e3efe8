/**
 * SEV-SNP evidence collection inside a guest (the attester's I/O; kept thin).
 *
 * 1. Linux configfs-tsm (`/sys/kernel/config/tsm/report`, Linux 6.7+): mkdir a fresh entry,
 *    optionally write `privlevel`, write the 64-byte `inblob`, read `generation`, `outblob`
 *    (the report) and `auxblob` (the GHCB certificate table), read `generation` again — if it
 *    moved, another writer touched the entry between our write and read, so retry — and rmdir.
 *    `provider` must read `sev_guest`.
 * 2. Fallback: /dev/sev-guest SNP_GET_EXT_REPORT through the native addon (`loadSys()`),
 *    imported lazily so this module loads on machines without the addon.
 *
 * Testing: the configfs path is exercised against an in-memory filesystem (`TsmFs`) that mimics
 * the kernel's behaviour (generation counter bumped on every write, outblob produced on read,
 * provider file); it cannot prove what a real kernel does, only that this code follows the
 * documented protocol. The ioctl path has no test outside an SEV-SNP guest (no /dev/sev-guest here).
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SigilError } from '../errors.js';
import { SNP_REPORT_SIZE } from './report.js';

export const DEFAULT_CONFIGFS_ROOT = '/sys/kernel/config/tsm/report';
export const DEFAULT_CERTS_BUFFER_LEN = 16384;

/** The few filesystem calls the configfs collector makes (swap in a fake for tests). */
export interface TsmFs {
  exists(path: string): Promise<boolean>;
  mkdir(path: string): Promise<void>;
  rmdir(path: string): Promise<void>;
  readFile(path: string): Promise<Buffer>;
  writeFile(path: string, data: Buffer): Promise<void>;
}

export const nodeTsmFs: TsmFs = {
  async exists(path) {
    try {
      await stat(path);
      return true;
    } catch {
      return false;
    }
  },
  async mkdir(path) {
    await mkdir(path);
  },
  async rmdir(path) {
    await rmdir(path);
  },
  async readFile(path) {
    return readFile(path);
  },
  async writeFile(path, data) {
    await writeFile(path, data);
  },
};

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

function errno(e: unknown): string {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : '';
}

function ioFail(code: string, what: string, e: unknown): SigilError {
  const msg = e instanceof Error ? e.message : String(e);
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

/** errnos of mkdir under configfs-tsm meaning "no TSM provider here" (so the ioctl is worth a try). */
const NO_PROVIDER_ERRNOS = new Set(['ENXIO', 'ENODEV', 'EOPNOTSUPP', 'ENOTSUP', 'ENOENT']);

export async function configfsAvailable(root: string = DEFAULT_CONFIGFS_ROOT, fs: TsmFs = nodeTsmFs): Promise<boolean> {
  return fs.exists(root);
}

/** One report through configfs-tsm. */
export async function getReportViaConfigfs(reportData: Buffer, opts: ConfigfsOptions = {}): Promise<SnpRawEvidence> {
  checkReportData(reportData);
  const fs = opts.fs ?? nodeTsmFs;
  const root = opts.root ?? DEFAULT_CONFIGFS_ROOT;
  const attempts = opts.maxAttempts ?? 3;
  if (opts.privlevel !== undefined && (!Number.isInteger(opts.privlevel) || opts.privlevel < 0 || opts.privlevel > 3)) {
    throw new SigilError('sev.config_invalid', 'privlevel must be an integer 0..3');
  }
  const dir = join(root, `sigil-${process.pid}-${randomBytes(6).toString('hex')}`);
  try {
    await fs.mkdir(dir);
  } catch (e) {
    const code = NO_PROVIDER_ERRNOS.has(errno(e)) ? 'sev.configfs_unavailable' : 'sev.configfs_failed';
    throw ioFail(code, `cannot create configfs-tsm entry ${dir}`, e);
  }
  try {
    let provider: string;
    try {
      provider = (await fs.readFile(join(dir, 'provider'))).toString('utf8').trim();
    } catch (e) {
      throw ioFail('sev.configfs_failed', `cannot read ${join(dir, 'provider')}`, e);
    }
    if (provider !== 'sev_guest') {
      throw new SigilError('sev.configfs_wrong_provider', `configfs-tsm provider is "${provider}", expected "sev_guest" (not an SEV-SNP guest)`, { status: 500 });
    }
    for (let attempt = 1; attempt <= attempts; attempt++) {
      let gen1: string;
      let gen2: string;
      let outblob: Buffer;
      let auxblob: Buffer | undefined;
      try {
        if (opts.privlevel !== undefined) await fs.writeFile(join(dir, 'privlevel'), Buffer.from(`${opts.privlevel}\n`));
        await fs.writeFile(join(dir, 'inblob'), reportData);
        gen1 = (await fs.readFile(join(dir, 'generation'))).toString('utf8').trim();
        outblob = await fs.readFile(join(dir, 'outblob'));
        try {
          auxblob = await fs.readFile(join(dir, 'auxblob'));
        } catch (e) {
          // Kernels before auxblob support, or a host that provides no certificates.
          if (!['ENOENT', 'ENODATA', 'EINVAL', 'EOPNOTSUPP'].includes(errno(e))) throw e;
        }
        gen2 = (await fs.readFile(join(dir, 'generation'))).toString('utf8').trim();
      } catch (e) {
        if (e instanceof SigilError) throw e;
        throw ioFail('sev.configfs_failed', `configfs-tsm report request in ${dir} failed`, e);
      }
      if (!/^\d+$/.test(gen1) || gen1 !== gen2) continue;
      const out: SnpRawEvidence = { report: checkReportShape(outblob, 'configfs-tsm outblob'), via: 'configfs' };
      if (auxblob && auxblob.length > 0) out.certTable = auxblob;
      return out;
    }
    throw new SigilError('sev.configfs_generation_race', `configfs-tsm generation in ${dir} kept changing between write and read (${attempts} attempts)`, { status: 500 });
  } finally {
    await fs.rmdir(dir).catch(() => undefined);
  }
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
