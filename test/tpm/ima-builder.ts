/**
 * Builds IMA measurement lists for tests, in both forms the kernel exports, byte by byte from the
 * kernel's layout (security/integrity/ima/ima_fs.c, ima_template_lib.c), independently of the
 * parser: ASCII lines and binary records with the same template data and template hash.
 */
import { createHash } from 'node:crypto';

export interface ImaSpec {
  template?: 'ima' | 'ima-ng' | 'ima-sig' | 'ima-buf';
  path: string;
  /** File digest (for `ima`: 20 bytes). */
  digest: Buffer;
  alg?: string;
  /** Third field of ima-sig / ima-buf. */
  extra?: Buffer;
  /** Use this template hash instead of computing it (e.g. the one from a real ASCII list). */
  templateHash?: Buffer;
  pcr?: number;
  violation?: boolean;
}

const u32 = (n: number): Buffer => {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
};
const field = (b: Buffer): Buffer => Buffer.concat([u32(b.length), b]);

/** The template data as the kernel hashes it. */
export function templateDataOf(s: ImaSpec): Buffer {
  const t = s.template ?? 'ima-ng';
  if (t === 'ima') {
    const name = Buffer.alloc(256);
    name.write(s.path, 'latin1');
    return Buffer.concat([s.digest, name]);
  }
  const parts = [field(Buffer.concat([Buffer.from(`${s.alg ?? 'sha256'}:\0`, 'latin1'), s.digest])), field(Buffer.from(`${s.path}\0`, 'latin1'))];
  if (t !== 'ima-ng') parts.push(field(s.extra ?? Buffer.alloc(0)));
  return Buffer.concat(parts);
}

export function templateHashOf(s: ImaSpec): Buffer {
  if (s.templateHash) return s.templateHash;
  if (s.violation) return Buffer.alloc(20);
  return createHash('sha1').update(templateDataOf(s)).digest();
}

export function asciiLine(s: ImaSpec): string {
  const t = s.template ?? 'ima-ng';
  const th = templateHashOf(s).toString('hex');
  if (t === 'ima') return `${s.pcr ?? 10} ${th} ima ${s.digest.toString('hex')} ${s.path}\n`;
  const base = `${s.pcr ?? 10} ${th} ${t} ${s.alg ?? 'sha256'}:${s.digest.toString('hex')} ${s.path}`;
  return t === 'ima-ng' ? `${base}\n` : `${base} ${(s.extra ?? Buffer.alloc(0)).toString('hex')}\n`;
}

export function binaryRecord(s: ImaSpec): Buffer {
  const t = s.template ?? 'ima-ng';
  const head = Buffer.concat([u32(s.pcr ?? 10), templateHashOf(s), u32(t.length), Buffer.from(t, 'latin1')]);
  if (t === 'ima') return Buffer.concat([head, s.digest, u32(Buffer.byteLength(s.path, 'latin1')), Buffer.from(s.path, 'latin1')]);
  const data = templateDataOf(s);
  return Buffer.concat([head, u32(data.length), data]);
}

export const asciiList = (specs: readonly ImaSpec[]): Buffer => Buffer.from(specs.map(asciiLine).join(''), 'latin1');
export const binaryList = (specs: readonly ImaSpec[]): Buffer => Buffer.concat(specs.map(binaryRecord));

/** `n` ima-ng entries for files /usr/bin/f<i> with digests derived from `seed` and i. */
export function syntheticSpecs(n: number, seed = 'x', from = 0): ImaSpec[] {
  const out: ImaSpec[] = [];
  for (let i = from; i < from + n; i++) out.push({ path: `/usr/lib/sigil-test/f${i}`, digest: createHash('sha256').update(`${seed}:${i}`).digest() });
  return out;
}

/** Parse a real ASCII ima-ng line into a spec that keeps its template hash. */
export function specFromAsciiLine(line: string): ImaSpec {
  const [pcr, th, template, dng, path] = line.split(' ') as [string, string, string, string, string];
  const [alg, hex] = dng.split(':') as [string, string];
  return { pcr: Number(pcr), templateHash: Buffer.from(th, 'hex'), template: template as ImaSpec['template'], alg, digest: Buffer.from(hex, 'hex'), path };
}
