/** CC event log replay into RTMR0–3 with the shared TCG event-log parser, on the real COS quote and log. */
import { describe, expect, it } from 'vitest';
import { checkCcelAgainstRtmrs, parseCcelArea, parseCcelTable, replayCcel } from '../../src/tdx/ccel.js';
import { parseTdxQuote } from '../../src/tdx/quote.js';
import { verifyTdxQuote } from '../../src/tdx/verify.js';
import { codeOf } from '../support/codes.js';
import { COS_AT, cosQuote, tdxFile } from './helpers.js';

const area = tdxFile('ccel_data.dat');
const table = tdxFile('ccel_table.dat');
const rtmrs = parseTdxQuote(cosQuote()).body.rtmrs;

describe('CC event log', () => {
  it('parses the ACPI CCEL table', () => {
    const t = parseCcelTable(table);
    expect(t.ccType).toBe(2);
    expect(t.laml).toBe(BigInt(area.length));
  });

  it('replays the COS log exactly to the quote RTMRs and yields boot selectors', () => {
    const r = checkCcelAgainstRtmrs(area, rtmrs, table);
    expect(r.log.byteLength).toBe(18101); // the 0xFF fill after it is not part of the log
    expect(r.events).toEqual([16, 7, 20, 0]);
    const v = verifyTdxQuote(cosQuote(), undefined, { now: COS_AT, allowUnknownTcb: true, eventLog: { area, table } });
    expect(v.selectors).toContain('tdx:secureboot:disabled');
    expect(v.selectors.filter((s) => s.startsWith('tdx:boot_app:sha384:'))).toHaveLength(2);
    expect(v.selectors.some((s) => s.startsWith('tdx:kernel_cmdline:sha384:'))).toBe(true);
    expect(v.claims.eventLog).toEqual({ eventsPerRtmr: [16, 7, 20, 0], records: 44, bytes: 18101 });
  });

  it('refuses a log whose replay differs from the quote (event digest changed, event dropped)', () => {
    const log = parseCcelArea(area);
    const ev = log.events[20]!;
    const flipped = Buffer.from(area);
    flipped[ev.offset + 12 + 2 + 5]! ^= 1; // inside the SHA-384 digest of that record
    expect(codeOf(() => checkCcelAgainstRtmrs(flipped, rtmrs))).toBe('tdx.rtmr_mismatch');
    const cut = area.subarray(0, log.events[43]!.offset);
    expect(codeOf(() => checkCcelAgainstRtmrs(cut, rtmrs))).toBe('tdx.rtmr_mismatch');
    expect(codeOf(() => verifyTdxQuote(cosQuote(), undefined, { now: COS_AT, allowUnknownTcb: true, eventLog: { area: cut } }))).toBe('tdx.rtmr_mismatch');
  });

  it('refuses garbage after the log that is not 0xFF fill, and bad tables', () => {
    const log = parseCcelArea(area);
    const junk = Buffer.from(area);
    junk[log.byteLength + 100] = 0x00;
    expect(codeOf(() => parseCcelArea(junk))).toBe('tdx.ccel_invalid');
    const t = Buffer.from(table);
    t[9]! ^= 1;
    expect(codeOf(() => parseCcelTable(t))).toBe('tdx.ccel_table_invalid');
    expect(codeOf(() => parseCcelTable(table.subarray(0, 40)))).toBe('tdx.ccel_table_invalid');
    expect(codeOf(() => replayCcel(parseCcelArea(Buffer.alloc(64, 0xff))))).toBe('tdx.ccel_invalid');
  });
});
