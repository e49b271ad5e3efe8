/**
 * parseAtTime, the one parser of `--at` for the offline evidence verbs: RFC 3339 date-times with
 * an explicit zone (`Z` or `±hh:mm`) only, every field range-checked (no rollover), years
 * 0000..9999; anything else is a usage error (`cli.usage`) that names the flag and the value.
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { parseAtTime } from '../../src/cli/at-time.js';

function refusal(v: string, flag?: string): SigilError {
  try {
    parseAtTime(v, flag);
  } catch (e) {
    if (e instanceof SigilError) return e;
    throw e;
  }
  throw new Error(`${v} was accepted`);
}

describe('parseAtTime: accepted', () => {
  it('Z, lowercase z and t, offsets, fractions: the instant it names', () => {
    const cases: [string, string][] = [
      ['2025-01-01T00:00:00Z', '2025-01-01T00:00:00.000Z'],
      ['2025-01-01t00:00:00z', '2025-01-01T00:00:00.000Z'],
      ['2025-01-01T01:00:00+01:00', '2025-01-01T00:00:00.000Z'],
      ['2024-12-31T18:30:00-05:30', '2025-01-01T00:00:00.000Z'],
      ['2025-01-01T00:00:00-00:00', '2025-01-01T00:00:00.000Z'],
      ['2024-12-13T07:37:58.960Z', '2024-12-13T07:37:58.960Z'],
      ['2024-12-13T07:37:58.9Z', '2024-12-13T07:37:58.900Z'],
      // Finer than a millisecond: truncated, never rounded up into the next millisecond.
      ['2024-12-13T07:37:58.999999999Z', '2024-12-13T07:37:58.999Z'],
      ['2024-02-29T12:00:00Z', '2024-02-29T12:00:00.000Z'],
      ['2000-02-29T00:00:00Z', '2000-02-29T00:00:00.000Z'],
      ['2025-12-31T23:59:59+23:59', '2025-12-31T00:00:59.000Z'],
    ];
    for (const [v, iso] of cases) expect({ v, iso: parseAtTime(v).toISOString() }).toEqual({ v, iso });
  });

  it('years 0000 and 9999, read as such (not as 1900+year)', () => {
    expect(parseAtTime('0000-01-01T00:00:00Z').getUTCFullYear()).toBe(0);
    expect(parseAtTime('0099-06-15T00:00:00Z').getUTCFullYear()).toBe(99);
    expect(parseAtTime('9999-12-31T23:59:59.999Z').toISOString()).toBe('9999-12-31T23:59:59.999Z');
  });

  it('no value: now', () => {
    const before = Date.now();
    const t = parseAtTime(undefined).getTime();
    expect(t).toBeGreaterThanOrEqual(before);
    expect(t).toBeLessThanOrEqual(Date.now());
  });
});

describe('parseAtTime: refused, with a message naming the flag, the value and the fault', () => {
  it('no zone: would be local time', () => {
    for (const v of ['2025-01-01T00:00:00', '2025-01-01T00:00:00.123', '2025-01-01T00:00', '2025-01-01t00:00:00']) {
      const e = refusal(v);
      expect(e.code).toBe('cli.usage');
      expect(e.message).toBe(`--at ${JSON.stringify(v)} has no zone offset (it would be read in local time): add Z for UTC or an offset such as +01:00`);
    }
  });

  it('dates that do not exist', () => {
    expect(refusal('2023-02-30T00:00:00Z').message).toBe('--at "2023-02-30T00:00:00Z" is not a real date: 2023-02 has 28 days');
    expect(refusal('2023-02-29T00:00:00Z').message).toMatch(/2023-02 has 28 days/);
    expect(refusal('1900-02-29T00:00:00Z').message).toMatch(/1900-02 has 28 days/);
    expect(refusal('2024-04-31T00:00:00Z').message).toMatch(/2024-04 has 30 days/);
    expect(refusal('2024-01-00T00:00:00Z').message).toMatch(/not a real date: day 00/);
    expect(refusal('2024-13-01T00:00:00Z').message).toMatch(/not a real date: month 13 is outside 01\.\.12/);
    expect(refusal('2024-00-01T00:00:00Z').message).toMatch(/month 00 is outside 01\.\.12/);
  });

  it('times that do not exist: hour 24, minute 60, second 60 (leap seconds cannot be represented)', () => {
    expect(refusal('2024-12-31T24:00:00Z').message).toBe('--at "2024-12-31T24:00:00Z" is not a real time: hour 24 is outside 00..23');
    expect(refusal('2024-12-31T23:60:00Z').message).toMatch(/minute 60 is outside 00\.\.59/);
    expect(refusal('2016-12-31T23:59:60Z').message).toMatch(/second 60 is outside 00\.\.59/);
  });

  it('zone offsets that do not exist', () => {
    expect(refusal('2025-01-01T00:00:00+24:00').message).toMatch(/zone offset \+24:00/);
    expect(refusal('2025-01-01T00:00:00-01:60').message).toMatch(/zone offset -01:60/);
  });

  it('years outside 0000..9999', () => {
    for (const v of ['+010000-01-01T00:00:00Z', '-000001-01-01T00:00:00Z', '10000-01-01T00:00:00Z', '+2025-01-01T00:00:00Z']) {
      expect(refusal(v).message).toBe(`--at ${JSON.stringify(v)}: the year must have exactly four digits (0000..9999)`);
    }
  });

  it('other shapes: dates alone, other formats, numbers, junk around the time', () => {
    expect(refusal('2025-01-01').message).toMatch(/is a date with no time/);
    for (const v of ['', '2025-01-01 00:00:00Z', ' 2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z ', '2025-01-01T00:00:00ZZ', '2025-01-01T00:00:00+0100', '2025-01-01T00:00:00+01', '20250101T000000Z', '2025-1-1T00:00:00Z', '1735689600', 'yesterday', 'Wed, 01 Jan 2025 00:00:00 GMT', '2025-01-01T00:00:00.Z', '2025-01-01T00:00:00.1234567890Z', '２０２５-01-01T00:00:00Z']) {
      const e = refusal(v);
      expect(e.code).toBe('cli.usage');
      expect(e.message).toBe(`--at must be an RFC 3339 time with a zone, such as 2025-01-01T00:00:00Z or 2025-01-01T01:00:00+01:00; got ${JSON.stringify(v)}`);
    }
  });

  it('names the flag it was given, and quotes the value safely (control characters escaped, long values cut)', () => {
    expect(refusal('2025-01-01T00:00:00', '--not-after').message).toMatch(/^--not-after "2025-01-01T00:00:00" has no zone offset/);
    const e = refusal('\x1b[31m2025');
    expect(e.message).toContain('"\\u001b[31m2025"');
    expect(e.message).not.toContain('\x1b');
    const long = refusal('9'.repeat(10_000));
    expect(long.message.length).toBeLessThan(200);
  });
});
