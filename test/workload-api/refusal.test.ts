/**
 * Refusal logging (src/agent/workload-api/refusal.ts): at most one line per 10 s, on a monotonic
 * clock — a step back of the wall clock must not silence refusals until it catches up.
 */
import type net from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Refusals } from '../../src/agent/workload-api/refusal.js';

function capture(): { logger: pino.Logger; lines: { msg: string; rejected: number }[] } {
  const lines: { msg: string; rejected: number }[] = [];
  const logger = pino({ level: 'warn' }, { write: (s: string) => lines.push(JSON.parse(s) as { msg: string; rejected: number }) });
  return { logger, lines };
}

const socket = (): net.Socket => ({ destroy: () => undefined }) as unknown as net.Socket;

afterEach(() => {
  vi.useRealTimers();
});

describe('Refusals', () => {
  it('logs the first refusal, then at most one per 10 s with the count so far', () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const { logger, lines } = capture();
    const r = new Refusals(logger);
    r.refuse(socket(), undefined);
    r.refuse(socket(), undefined);
    vi.advanceTimersByTime(5_000);
    r.refuse(socket(), undefined);
    expect(lines.map((l) => l.rejected)).toEqual([1]);
    vi.advanceTimersByTime(6_000);
    r.refuse(socket(), undefined);
    expect(lines.map((l) => l.rejected)).toEqual([1, 4]);
    expect(r.count).toBe(4);
  });

  it('keeps logging after the wall clock steps back an hour', () => {
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const { logger, lines } = capture();
    const r = new Refusals(logger);
    r.refuse(socket(), undefined);
    vi.setSystemTime(Date.now() - 3_600_000);
    vi.advanceTimersByTime(11_000);
    r.refuse(socket(), undefined);
    expect(lines.map((l) => l.rejected)).toEqual([1, 2]);
  });
});
