/**
 * `--at TIME` of the offline evidence verbs (`sigil evidence verify aws_nitro|sev_snp|tdx|tpm`):
 * the one parser of the verification time.
 *
 * Takes an RFC 3339 date-time with an explicit zone only: `YYYY-MM-DDTHH:MM:SS[.fraction]`
 * followed by `Z` or `±hh:mm` (`T` and `Z` may be lowercase). A time without a zone is refused,
 * not read in the local time zone (the verdict would then depend on the machine it runs on).
 * Every field is range-checked, so a date or time that does not exist (2023-02-30, hour 24,
 * second 60) is refused instead of being rolled over into another instant as `Date` does; the
 * year has exactly four digits (0000..9999). A fraction finer than a millisecond is truncated.
 * Anything else is a usage error (`cli.usage`, exit 2) naming the flag, the value and the fault.
 */
import { UsageError } from './output.js';

const EXAMPLE = 'such as 2025-01-01T00:00:00Z or 2025-01-01T01:00:00+01:00';

const RFC3339 = /^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$/;
/** A date and time with no zone at all (seconds and fraction optional): the shape people write for local time. */
const NO_ZONE = /^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?$/;
const DATE_ONLY = /^\d{4}-\d{2}-\d{2}$/;
/** An expanded year (ISO 8601 `±YYYYYY`) or more than four digits. */
const LONG_YEAR = /^(?:[+-]\d+|\d{5,})-\d{2}-\d{2}[Tt]/;

/** The value as shown in a message: JSON-quoted (control characters escaped) and cut to 64 characters. */
function quoted(v: string): string {
  return JSON.stringify(v.length > 64 ? `${v.slice(0, 64)}…` : v);
}

const two = (n: number): string => String(n).padStart(2, '0');

function isLeap(y: number): boolean {
  return (y % 4 === 0 && y % 100 !== 0) || y % 400 === 0;
}

function daysInMonth(y: number, m: number): number {
  return m === 2 ? (isLeap(y) ? 29 : 28) : [4, 6, 9, 11].includes(m) ? 30 : 31;
}

/**
 * `value` (the text after `flag`) as a Date; no value means now. Throws UsageError (`cli.usage`)
 * for anything but an RFC 3339 date-time with `Z` or `±hh:mm` that names a real instant.
 */
export function parseAtTime(value: string | undefined, flag = '--at'): Date {
  if (value === undefined) return new Date();
  const m = RFC3339.exec(value);
  if (!m) {
    if (NO_ZONE.test(value)) throw new UsageError(`${flag} ${quoted(value)} has no zone offset (it would be read in local time): add Z for UTC or an offset such as +01:00`);
    if (DATE_ONLY.test(value)) throw new UsageError(`${flag} ${quoted(value)} is a date with no time and zone: give a time ${EXAMPLE}`);
    if (LONG_YEAR.test(value)) throw new UsageError(`${flag} ${quoted(value)}: the year must have exactly four digits (0000..9999)`);
    throw new UsageError(`${flag} must be an RFC 3339 time with a zone, ${EXAMPLE}; got ${quoted(value)}`);
  }
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [number, number, number, number, number, number];
  const notDate = (why: string): never => {
    throw new UsageError(`${flag} ${quoted(value)} is not a real date: ${why}`);
  };
  const notTime = (why: string): never => {
    throw new UsageError(`${flag} ${quoted(value)} is not a real time: ${why}`);
  };
  if (month < 1 || month > 12) notDate(`month ${two(month)} is outside 01..12`);
  const dim = daysInMonth(year, month);
  if (day < 1) notDate(`day ${two(day)} is outside 01..${dim}`);
  if (day > dim) notDate(`${String(year).padStart(4, '0')}-${two(month)} has ${dim} days`);
  if (hour > 23) notTime(`hour ${two(hour)} is outside 00..23`);
  if (minute > 59) notTime(`minute ${two(minute)} is outside 00..59`);
  if (second > 59) notTime(`second ${two(second)} is outside 00..59${second === 60 ? ' (leap seconds cannot be represented)' : ''}`);
  let offsetMinutes = 0;
  if (m[8] === undefined) {
    const offHours = Number(m[10]);
    const offMinutes = Number(m[11]);
    if (offHours > 23 || offMinutes > 59) notTime(`zone offset ${m[9]}${m[10]}:${m[11]} is outside -23:59..+23:59`);
    offsetMinutes = (m[9] === '-' ? -1 : 1) * (offHours * 60 + offMinutes);
  }
  const ms = m[7] === undefined ? 0 : Number(m[7].slice(0, 3).padEnd(3, '0'));
  // setUTCFullYear, not Date.UTC: Date.UTC reads years 0..99 as 1900..1999.
  const d = new Date(0);
  d.setUTCFullYear(year, month - 1, day);
  d.setUTCHours(hour, minute, second, ms);
  return new Date(d.getTime() - offsetMinutes * 60_000);
}
