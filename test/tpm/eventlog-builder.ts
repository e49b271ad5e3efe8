/** Builds TCG event logs byte by byte for tests (little-endian, as the PC Client profile). */
import { createHash } from 'node:crypto';

export interface BuiltEvent {
  index: number;
  type: number;
  /** algId → digest; default: hash of data in every bank. */
  digests?: [number, Buffer][];
  data: Buffer;
}

const SIZES: Record<number, [number, string]> = { 0x4: [20, 'sha1'], 0xb: [32, 'sha256'], 0xc: [48, 'sha384'], 0xd: [64, 'sha512'] };

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v >>> 0);
  return b;
}
function u16(v: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16LE(v);
  return b;
}

export function specIdData(algs: [number, number][], opts: { signature?: string; major?: number; uintn?: number; trailing?: Buffer } = {}): Buffer {
  return Buffer.concat([
    Buffer.from(opts.signature ?? 'Spec ID Event03\0', 'latin1'),
    u32(0),
    Buffer.from([0, opts.major ?? 2, 0, opts.uintn ?? 2]),
    u32(algs.length),
    ...algs.map(([id, size]) => Buffer.concat([u16(id), u16(size)])),
    Buffer.from([0]),
    opts.trailing ?? Buffer.alloc(0),
  ]);
}

export function legacyRecord(index: number, type: number, digest: Buffer, data: Buffer): Buffer {
  return Buffer.concat([u32(index), u32(type), digest, u32(data.length), data]);
}

export function agileRecord(ev: BuiltEvent, algs: number[]): Buffer {
  const digests = ev.digests ?? algs.map((id): [number, Buffer] => [id, createHash(SIZES[id]![1]).update(ev.data).digest()]);
  return Buffer.concat([u32(ev.index), u32(ev.type), u32(digests.length), ...digests.map(([id, d]) => Buffer.concat([u16(id), d])), u32(ev.data.length), ev.data]);
}

/** A crypto-agile log with the given banks (algorithm IDs) and events. */
export function agileLog(algs: number[], events: BuiltEvent[], spec?: Buffer): Buffer {
  const header = legacyRecord(0, 3, Buffer.alloc(20), spec ?? specIdData(algs.map((id) => [id, SIZES[id]![0]])));
  return Buffer.concat([header, ...events.map((e) => agileRecord(e, algs))]);
}

export function startupLocality(loc: number): BuiltEvent {
  return { index: 0, type: 3, digests: undefined, data: Buffer.concat([Buffer.from('StartupLocality\0', 'latin1'), Buffer.from([loc])]) };
}
