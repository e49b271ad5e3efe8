/**
 * In-memory stand-in for Linux configfs-tsm (`/sys/kernel/config/tsm/report`), implementing the
 * collector's TsmFs interface. It mimics the documented kernel behaviour the collector relies on:
 * mkdir creates an entry with `provider` and `generation` files; every write to `inblob` or
 * `privlevel` bumps `generation`; reading `outblob`/`auxblob` produces the report for the current
 * inblob (cached per generation). What it cannot show is that a real kernel behaves this way.
 */
import { basename, dirname } from 'node:path';
import type { TsmFs } from '../../src/sev/attester.js';

export interface FakeTsmOptions {
  root?: string;
  provider?: string;
  /** Produces { report, aux } for an inblob (and privlevel, if written). */
  produce: (inblob: Buffer, privlevel: number | undefined) => { report: Buffer; aux?: Buffer };
  /** Simulate another writer: bump generation during the next N outblob/auxblob reads. */
  racingWrites?: number;
  /** Make mkdir fail with this errno code (e.g. "ENXIO" when no TSM provider is registered). */
  mkdirErrno?: string;
  /** No auxblob attribute (older kernels): reading it fails with ENOENT. */
  noAuxblob?: boolean;
}

interface Entry {
  generation: number;
  inblob?: Buffer;
  privlevel?: number;
  cached?: { generation: number; report: Buffer; aux?: Buffer };
}

function errnoError(code: string, path: string): Error {
  return Object.assign(new Error(`${code}: ${path}`), { code });
}

export class FakeTsm implements TsmFs {
  readonly root: string;
  readonly entries = new Map<string, Entry>();
  readonly log: string[] = [];
  created = 0;
  removed = 0;
  constructor(private readonly opts: FakeTsmOptions) {
    this.root = opts.root ?? '/fake/sys/kernel/config/tsm/report';
  }

  private entry(path: string): [Entry, string] {
    const dir = dirname(path);
    const e = dirname(dir) === this.root ? this.entries.get(basename(dir)) : undefined;
    if (!e) throw errnoError('ENOENT', path);
    return [e, basename(path)];
  }

  private produce(e: Entry): { report: Buffer; aux?: Buffer } {
    if (this.opts.racingWrites && this.opts.racingWrites > 0) {
      this.opts.racingWrites--;
      e.generation++;
    }
    if (!e.cached || e.cached.generation !== e.generation) {
      if (!e.inblob) throw errnoError('EINVAL', 'outblob before inblob');
      e.cached = { generation: e.generation, ...this.opts.produce(e.inblob, e.privlevel) };
    }
    return e.cached;
  }

  async exists(path: string): Promise<boolean> {
    return path === this.root || (dirname(path) === this.root && this.entries.has(basename(path)));
  }
  async mkdir(path: string): Promise<void> {
    this.log.push(`mkdir ${basename(path)}`);
    if (this.opts.mkdirErrno) throw errnoError(this.opts.mkdirErrno, path);
    if (dirname(path) !== this.root) throw errnoError('ENOENT', path);
    if (this.entries.has(basename(path))) throw errnoError('EEXIST', path);
    this.entries.set(basename(path), { generation: 0 });
    this.created++;
  }
  async rmdir(path: string): Promise<void> {
    this.log.push(`rmdir ${basename(path)}`);
    if (!this.entries.delete(basename(path))) throw errnoError('ENOENT', path);
    this.removed++;
  }
  async readFile(path: string): Promise<Buffer> {
    const [e, attr] = this.entry(path);
    this.log.push(`read ${attr}`);
    switch (attr) {
      case 'provider':
        return Buffer.from(`${this.opts.provider ?? 'sev_guest'}\n`);
      case 'generation':
        return Buffer.from(`${e.generation}\n`);
      case 'outblob':
        return Buffer.from(this.produce(e).report);
      case 'auxblob':
        if (this.opts.noAuxblob) throw errnoError('ENOENT', path);
        return Buffer.from(this.produce(e).aux ?? Buffer.alloc(0));
      default:
        throw errnoError('ENOENT', path);
    }
  }
  async writeFile(path: string, data: Buffer): Promise<void> {
    const [e, attr] = this.entry(path);
    this.log.push(`write ${attr}`);
    if (attr === 'inblob') {
      if (data.length > 64) throw errnoError('EINVAL', path);
      e.inblob = Buffer.from(data);
      e.generation++;
    } else if (attr === 'privlevel') {
      const v = Number(data.toString('utf8').trim());
      if (!Number.isInteger(v) || v < 0 || v > 3) throw errnoError('EINVAL', path);
      e.privlevel = v;
      e.generation++;
    } else {
      throw errnoError('EACCES', path);
    }
  }
}
