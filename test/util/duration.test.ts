import { describe, expect, it } from 'vitest';
import { parseDuration } from '../../src/util/duration.js';
import { SigilError } from '../../src/errors.js';

function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return e instanceof SigilError ? e.code : 'not-a-SigilError';
  }
  return undefined;
}

describe('parseDuration', () => {
  it('takes plain seconds as numbers or digit strings', () => {
    expect(parseDuration(0, 'k')).toBe(0);
    expect(parseDuration(90, 'k')).toBe(90);
    expect(parseDuration('90', 'k')).toBe(90);
    expect(parseDuration('1.5', 'k')).toBe(1.5);
  });

  it('adds up unit groups, milliseconds included', () => {
    expect(parseDuration('30s', 'k')).toBe(30);
    expect(parseDuration('5m', 'k')).toBe(300);
    expect(parseDuration('1h30m', 'k')).toBe(5400);
    expect(parseDuration('1d', 'k')).toBe(86400);
    expect(parseDuration('250ms', 'k')).toBeCloseTo(0.25, 10);
    expect(parseDuration(' 24h ', 'k')).toBe(86400);
  });

  it('refuses what is not a duration, naming the key', () => {
    for (const bad of ['', 'h', '5x', '5 m', '-5s', '1h 30m', 's5', '5m!', '1e3s']) {
      expect(codeOf(() => parseDuration(bad, 'ca.ttl')), bad).toBe('config.bad_duration');
    }
    try {
      parseDuration('5x', 'ca.ttl');
    } catch (e) {
      expect((e as Error).message).toContain('ca.ttl');
    }
  });

  it('refuses negative, NaN and infinite numbers and overflowing strings', () => {
    for (const bad of [-1, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(codeOf(() => parseDuration(bad, 'k')), String(bad)).toBe('config.bad_duration');
    }
    expect(codeOf(() => parseDuration(`${'9'.repeat(400)}d`, 'k'))).toBe('config.bad_duration');
    expect(codeOf(() => parseDuration('9'.repeat(400), 'k'))).toBe('config.bad_duration');
  });
});
