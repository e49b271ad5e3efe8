import { SigilError } from '../errors.js';

const UNITS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 };

/**
 * Parse a duration given as seconds (number) or a string such as "90s", "5m", "1h30m", "24h", "250ms".
 * Returns seconds (may be fractional for ms). `key` names the config key or flag in the error.
 */
export function parseDuration(v: string | number, key: string): number {
  if (typeof v === 'number') {
    if (!Number.isFinite(v) || v < 0) throw new SigilError('config.bad_duration', `${key}: duration must be a non-negative number of seconds, got ${v}`);
    return v;
  }
  const s = String(v).trim();
  if (/^\d+(\.\d+)?$/.test(s)) return finite(Number(s), s, key);
  const re = /(\d+(?:\.\d+)?)(ms|s|m|h|d)/gy;
  let total = 0;
  let matched = 0;
  let m: RegExpExecArray | null;
  while ((m = re.exec(s)) !== null) {
    total += Number(m[1]) * (UNITS[m[2] as string] as number);
    matched = re.lastIndex;
  }
  if (s.length === 0 || matched !== s.length) {
    throw new SigilError('config.bad_duration', `${key}: "${s}" is not a duration (use e.g. 30s, 5m, 1h, 24h)`);
  }
  return finite(total, s, key);
}

function finite(seconds: number, text: string, key: string): number {
  if (!Number.isFinite(seconds)) throw new SigilError('config.bad_duration', `${key}: "${text.slice(0, 40)}" is too large a duration`);
  return seconds;
}

/** JSON Schema fragment for a duration value: seconds or a "5m"-style string. */
export const durationSchema = {
  anyOf: [
    { type: 'number', minimum: 0 },
    { type: 'string', pattern: '^(\\d+(\\.\\d+)?)$|^((\\d+(\\.\\d+)?)(ms|s|m|h|d))+$' },
  ],
} as const;
