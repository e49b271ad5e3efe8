/**
 * parseSpecIdEvent against a reference: the implementation as it was before it lost its per-call
 * closures (a `bad` helper and a `guard` that renamed truncation), kept here verbatim in behaviour.
 * Both must give the same Spec ID event, or the same error code and message, for the Spec ID data
 * of real logs, every prefix of it, single-byte changes at every position, and random mutations.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { algorithmById, type EventLogAlgorithm } from '../../src/tpm/eventlog/algorithms.js';
import { parseSpecIdEvent, type SpecIdEvent } from '../../src/tpm/eventlog/index.js';
import { hasTestdata, td } from '../support/testdata.js';

// ---------------------------------------------------------------- reference (the former parser)

const SPEC_ID_03 = Buffer.from('Spec ID Event03\0', 'latin1');

function refFail(code: string, message: string): never {
  throw new SigilError(`tpm.eventlog_${code}`, `event log: ${message}`);
}

class RefReader {
  off = 0;
  constructor(private readonly buf: Buffer) {}
  get remaining(): number {
    return this.buf.length - this.off;
  }
  need(n: number, field: string, recordStart: number): void {
    if (n > this.remaining) refFail('truncated', `record at byte ${recordStart}: ${field} needs ${n} byte(s), ${this.remaining} left`);
  }
  u8(field: string, rec: number): number {
    this.need(1, field, rec);
    return this.buf.readUInt8(this.off++);
  }
  u16(field: string, rec: number): number {
    this.need(2, field, rec);
    const v = this.buf.readUInt16LE(this.off);
    this.off += 2;
    return v;
  }
  u32(field: string, rec: number): number {
    this.need(4, field, rec);
    const v = this.buf.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }
  bytes(n: number, field: string, rec: number): Buffer {
    this.need(n, field, rec);
    const v = this.buf.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }
}

function referenceParseSpecIdEvent(data: Buffer): SpecIdEvent {
  const bad = (m: string): never => refFail('bad_spec_id', `Spec ID event: ${m}`);
  if (data.length < SPEC_ID_03.length || !data.subarray(0, SPEC_ID_03.length).equals(SPEC_ID_03)) bad('signature is not "Spec ID Event03"');
  const r = new RefReader(data);
  r.off = SPEC_ID_03.length;
  const guard = <T>(f: () => T): T => {
    try {
      return f();
    } catch (e) {
      if (e instanceof SigilError && e.code === 'tpm.eventlog_truncated') bad('truncated');
      throw e;
    }
  };
  return guard(() => {
    const platformClass = r.u32('platformClass', 0);
    const minor = r.u8('specVersionMinor', 0);
    const major = r.u8('specVersionMajor', 0);
    const errata = r.u8('specErrata', 0);
    const uintnSize = r.u8('uintnSize', 0);
    if (major !== 2) bad(`spec version major ${major}, expected 2`);
    if (uintnSize !== 1 && uintnSize !== 2) bad(`uintnSize ${uintnSize}, expected 1 or 2`);
    const count = r.u32('numberOfAlgorithms', 0);
    if (count === 0) bad('declares no algorithms');
    if (count > 8) bad(`declares ${count} algorithms (at most 8)`);
    const algorithms: EventLogAlgorithm[] = [];
    for (let i = 0; i < count; i++) {
      const id = r.u16('algorithmId', 0);
      const size = r.u16('digestSize', 0);
      const alg = algorithmById(id);
      if (alg === undefined) refFail('unknown_algorithm', `Spec ID event declares algorithm 0x${id.toString(16).padStart(4, '0')}, which Sigil does not know`);
      if (alg.size !== size) bad(`declares ${alg.name} with digest size ${size}, expected ${alg.size}`);
      if (algorithms.some((a) => a.id === id)) bad(`declares ${alg.name} twice`);
      algorithms.push(alg);
    }
    const vendorInfoSize = r.u8('vendorInfoSize', 0);
    const vendorInfo = r.bytes(vendorInfoSize, 'vendorInfo', 0);
    if (r.remaining !== 0) bad(`${r.remaining} trailing byte(s)`);
    return { platformClass, specVersion: { major, minor, errata }, uintnSize, algorithms, vendorInfo };
  });
}

// ---------------------------------------------------------------- comparison

type Outcome = { ok: true; value: SpecIdEvent } | { ok: false; code: string; message: string };

function outcome(f: () => SpecIdEvent): Outcome {
  try {
    return { ok: true, value: f() };
  } catch (e) {
    if (e instanceof SigilError) return { ok: false, code: e.code, message: e.message };
    throw e;
  }
}

function same(data: Buffer): void {
  const want = outcome(() => referenceParseSpecIdEvent(data));
  const got = outcome(() => parseSpecIdEvent(data));
  expect(got, `input ${data.toString('hex')}`).toEqual(want);
}

/** The Spec ID event data of a crypto-agile log (the first record's data, after its 32-byte header). */
function specIdDataOf(log: Buffer): Buffer {
  const size = log.readUInt32LE(28);
  return log.subarray(32, 32 + size);
}

/** A Spec ID event declaring `algs` ([id, size] pairs), with `vendor` bytes. */
function specId(algs: [number, number][], vendor = Buffer.alloc(0), opts: { major?: number; uintn?: number; count?: number } = {}): Buffer {
  const head = Buffer.alloc(4 + 4 + 4);
  head.writeUInt32LE(0, 0);
  head[4] = 0;
  head[5] = opts.major ?? 2;
  head[6] = 0;
  head[7] = opts.uintn ?? 2;
  head.writeUInt32LE(opts.count ?? algs.length, 8);
  const list = Buffer.alloc(4 * algs.length);
  algs.forEach(([id, size], i) => {
    list.writeUInt16LE(id, 4 * i);
    list.writeUInt16LE(size, 4 * i + 2);
  });
  return Buffer.concat([SPEC_ID_03, head, list, Buffer.from([vendor.length]), vendor]);
}

const SYNTHETIC: Buffer[] = [
  specId([[0x0004, 20], [0x000b, 32]]),
  specId([[0x000b, 32]], Buffer.from('vendor')),
  specId([[0x0004, 20], [0x000b, 32], [0x000c, 48], [0x000d, 64]]),
  specId([[0x000b, 32], [0x000b, 32]]),
  specId([[0x000b, 31]]),
  specId([[0x1234, 32]]),
  specId([]),
  specId([[0x000b, 32]], Buffer.alloc(0), { major: 1 }),
  specId([[0x000b, 32]], Buffer.alloc(0), { uintn: 3 }),
  specId([[0x000b, 32]], Buffer.alloc(0), { count: 9 }),
  specId([[0x000b, 32]], Buffer.alloc(0), { count: 0xffffffff }),
  Buffer.concat([specId([[0x000b, 32]]), Buffer.from([0])]),
  Buffer.from('Spec ID Event02\0', 'latin1'),
  Buffer.alloc(0),
];

describe('parseSpecIdEvent (differential against the former implementation)', () => {
  const real: Buffer[] = [];
  if (hasTestdata) {
    for (const name of ['ubuntu_2104_shielded_vm_no_secure_boot_eventlog', 'crypto_agile_eventlog', 'sb_cert_eventlog', 'keylime_binary_bios_measurements_secureboot']) {
      real.push(specIdDataOf(readFileSync(td('tpm-eventlog', name))));
    }
  }
  const inputs = [...real, ...SYNTHETIC];

  it('agrees on the inputs as they are and on every prefix', () => {
    for (const d of inputs) for (let n = 0; n <= d.length; n++) same(Buffer.from(d.subarray(0, n)));
  });

  it('agrees with each byte set to 0x00, 0x01, 0xff and flipped', () => {
    for (const d of inputs) {
      for (let i = 0; i < d.length; i++) {
        for (const v of [0x00, 0x01, 0xff, d[i]! ^ 0x80]) {
          const m = Buffer.from(d);
          m[i] = v;
          same(m);
        }
      }
    }
  });

  it('agrees on random mutations (bytes changed, cut, appended)', () => {
    for (let k = 0; k < 20_000; k++) {
      const base = inputs[k % inputs.length]!;
      let m = Buffer.from(base);
      const edits = 1 + (k % 4);
      for (let e = 0; e < edits && m.length > 0; e++) m[randomBytes(2).readUInt16LE(0) % m.length] = randomBytes(1)[0]!;
      if (k % 5 === 0) m = m.subarray(0, randomBytes(2).readUInt16LE(0) % (m.length + 1));
      if (k % 7 === 0) m = Buffer.concat([m, randomBytes(k % 9)]);
      same(m);
    }
  });
});
