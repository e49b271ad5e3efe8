/**
 * Linux configfs-tsm (`/sys/kernel/config/tsm/report`, Linux 6.7+): the one collector of
 * confidential-computing evidence through the kernel's TSM report interface, shared by the SEV-SNP
 * (`sev_guest`) and TDX (`tdx_guest`) attesters. The attester's I/O only; kept thin.
 *
 * Protocol: mkdir a fresh entry, check `provider`, optionally write `privlevel`, write `inblob`
 * (64 bytes: REPORT_DATA / REPORTDATA), read `generation`, `outblob` (the report or quote) and,
 * when asked, `auxblob`, read `generation` again — if it moved, another writer touched the entry
 * between our write and read, so retry — and rmdir.
 *
 * Testing: exercised against an in-memory filesystem (`TsmFs`, see test/sev/fake-tsm.ts) that
 * mimics the kernel's documented behaviour; it cannot prove what a real kernel does.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rmdir, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';

export const DEFAULT_CONFIGFS_ROOT = '/sys/kernel/config/tsm/report';

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

export interface TsmReportRequest {
  /** Error code area of the caller (`sev` → `sev.configfs_failed`, …). */
  area: string;
  /** Expected `provider` (`sev_guest`, `tdx_guest`) and how to name the guest in errors. */
  provider: string;
  guestName: string;
  inblob: Buffer;
  root?: string;
  /** `privlevel` to write (SEV-SNP VMPL); omitted = not written. */
  privlevel?: number;
  /** Read `auxblob` too (SEV-SNP certificate table). */
  readAuxblob?: boolean;
  fs?: TsmFs;
  /** Attempts when `generation` moves between write and read. Default 3. */
  maxAttempts?: number;
}

export interface TsmReport {
  outblob: Buffer;
  auxblob?: Buffer;
}

export function errnoOf(e: unknown): string {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : '';
}

function ioFail(code: string, what: string, e: unknown): SigilError {
  const msg = errorMessage(e);
  return new SigilError(code, `${what}: ${msg}`, { cause: e, status: 500 });
}

/** errnos of mkdir under configfs-tsm meaning "no TSM provider here" (so an ioctl fallback is worth a try). */
export const NO_PROVIDER_ERRNOS: ReadonlySet<string> = new Set(['ENXIO', 'ENODEV', 'EOPNOTSUPP', 'ENOTSUP', 'ENOENT']);

/** One report through configfs-tsm (see the module comment). */
export async function getTsmReport(req: TsmReportRequest): Promise<TsmReport> {
  const { area } = req;
  const fs = req.fs ?? nodeTsmFs;
  const root = req.root ?? DEFAULT_CONFIGFS_ROOT;
  const attempts = req.maxAttempts ?? 3;
  if (req.privlevel !== undefined && (!Number.isInteger(req.privlevel) || req.privlevel < 0 || req.privlevel > 3)) {
    throw new SigilError(`${area}.config_invalid`, 'privlevel must be an integer 0..3');
  }
  const dir = join(root, `sigil-${process.pid}-${randomBytes(6).toString('hex')}`);
  try {
    await fs.mkdir(dir);
  } catch (e) {
    const code = NO_PROVIDER_ERRNOS.has(errnoOf(e)) ? `${area}.configfs_unavailable` : `${area}.configfs_failed`;
    throw ioFail(code, `cannot create configfs-tsm entry ${dir}`, e);
  }
  try {
    let provider: string;
    try {
      provider = (await fs.readFile(join(dir, 'provider'))).toString('utf8').trim();
    } catch (e) {
      throw ioFail(`${area}.configfs_failed`, `cannot read ${join(dir, 'provider')}`, e);
    }
    if (provider !== req.provider) {
      throw new SigilError(`${area}.configfs_wrong_provider`, `configfs-tsm provider is "${provider}", expected "${req.provider}" (not an ${req.guestName} guest)`, { status: 500 });
    }
    for (let attempt = 1; attempt <= attempts; attempt++) {
      let gen1: string;
      let gen2: string;
      let outblob: Buffer;
      let auxblob: Buffer | undefined;
      try {
        if (req.privlevel !== undefined) await fs.writeFile(join(dir, 'privlevel'), Buffer.from(`${req.privlevel}\n`));
        await fs.writeFile(join(dir, 'inblob'), req.inblob);
        gen1 = (await fs.readFile(join(dir, 'generation'))).toString('utf8').trim();
        outblob = await fs.readFile(join(dir, 'outblob'));
        if (req.readAuxblob) {
          try {
            auxblob = await fs.readFile(join(dir, 'auxblob'));
          } catch (e) {
            // Kernels before auxblob support, or a host that provides no certificates.
            if (!['ENOENT', 'ENODATA', 'EINVAL', 'EOPNOTSUPP'].includes(errnoOf(e))) throw e;
          }
        }
        gen2 = (await fs.readFile(join(dir, 'generation'))).toString('utf8').trim();
      } catch (e) {
        if (e instanceof SigilError) throw e;
        throw ioFail(`${area}.configfs_failed`, `configfs-tsm report request in ${dir} failed`, e);
      }
      if (!/^\d+$/.test(gen1) || gen1 !== gen2) continue;
      return auxblob && auxblob.length > 0 ? { outblob, auxblob } : { outblob };
    }
    throw new SigilError(`${area}.configfs_generation_race`, `configfs-tsm generation in ${dir} kept changing between write and read (${attempts} attempts)`, { status: 500 });
  } finally {
    await fs.rmdir(dir).catch(() => undefined);
  }
}
