/**
 * Attack review (TDX CC event log): the 0xFF-fill quirk moved the cut forward one byte at a time
 * and re-parsed the whole log each time (up to 65 parses of a 4 MiB area), so one event log whose
 * last record is truncated under 64+ bytes of fill cost ~60× a normal parse — seconds of CPU per
 * attestation. The cut must be found without re-parsing the log per byte.
 */
import { readFileSync } from 'node:fs';
import { describe, expect, it, vi } from 'vitest';
import { codeOf } from '../support/codes.js';
import { td } from '../support/testdata.js';

const calls = vi.hoisted(() => ({ n: 0 }));
vi.mock('../../src/tpm/eventlog/index.js', async (importOriginal) => {
  const mod = await importOriginal<typeof import('../../src/tpm/eventlog/index.js')>();
  return {
    ...mod,
    parseEventLog: (...a: Parameters<typeof mod.parseEventLog>) => {
      calls.n++;
      return mod.parseEventLog(...a);
    },
  };
});
const { CCEL_MAX_AREA, parseCcelArea } = await import('../../src/tdx/ccel.js');

const real = readFileSync(td('tdx', 'ccel_data.dat'));
let logEnd = real.length;
while (real[logEnd - 1] === 0xff) logEnd--;
const head = real.subarray(0, logEnd);

/** A crypto-agile record: register index 1 (RTMR0), EV_EVENT_TAG, one SHA-384 digest, `data`. */
function record(data: Buffer, declaredSize = data.length): Buffer {
  const h = Buffer.alloc(4 + 4 + 4 + 2 + 48 + 4);
  h.writeUInt32LE(1, 0);
  h.writeUInt32LE(0x6, 4);
  h.writeUInt32LE(1, 8);
  h.writeUInt16LE(0x0c, 12);
  h.writeUInt32LE(declaredSize, h.length - 4);
  return Buffer.concat([h, data]);
}

describe('CCEL fill quirk: bounded work', () => {
  it('a truncated last record under a long 0xFF fill costs one parse, not one per fill byte', () => {
    const filler = record(Buffer.alloc(0));
    const n = Math.floor((CCEL_MAX_AREA - head.length - 200) / filler.length);
    const body = Buffer.concat([head, ...Array<Buffer>(n).fill(filler), record(Buffer.alloc(0), 0x100000)]);
    const area = Buffer.concat([body, Buffer.alloc(CCEL_MAX_AREA - body.length, 0xff)]);
    calls.n = 0;
    expect(codeOf(() => parseCcelArea(area))).toBe('tdx.ccel_invalid');
    expect(calls.n).toBeLessThanOrEqual(2);
  });

  it('still cuts after a last record whose own data ends in 0xFF bytes (the quirk)', () => {
    const last = record(Buffer.from([0x41, 0x42, 0xff, 0xff, 0xff]));
    const log = Buffer.concat([head, last]);
    const area = Buffer.concat([log, Buffer.alloc(4096, 0xff)]);
    calls.n = 0;
    const parsed = parseCcelArea(area);
    expect(parsed.byteLength).toBe(log.length);
    expect(parsed.events.at(-1)!.data.equals(Buffer.from([0x41, 0x42, 0xff, 0xff, 0xff]))).toBe(true);
    expect(calls.n).toBeLessThanOrEqual(2);
  });

  it('the log exactly filling the area, and the real log, still parse', () => {
    expect(parseCcelArea(Buffer.concat([head, record(Buffer.from([1, 0xff]))])).events.length).toBe(45);
    expect(parseCcelArea(real).byteLength).toBe(logEnd);
  });
});
