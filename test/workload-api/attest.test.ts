import { describe, expect, it } from 'vitest';
import pino from 'pino';
import { attestCaller } from '../../src/agent/workload-api/attest.js';
import { Deadlines } from '../../src/agent/workload-api/deadlines.js';
import type { WorkloadAttestor, WorkloadCaller } from '../../src/plugins/types.js';

const logger = pino({ level: 'silent' });
const caller: WorkloadCaller = { pid: 4242, uid: 1000, gid: 1000 };

/** An attestor that records every signal it is given. */
function recording(name: string, body: (signal: AbortSignal) => Promise<string[]> = async () => [`${name}:ok`]): { attestor: WorkloadAttestor; signals: AbortSignal[] } {
  const signals: AbortSignal[] = [];
  return {
    signals,
    attestor: {
      attest: (_c, signal) => {
        signals.push(signal);
        return body(signal);
      },
    },
  };
}

describe('attestCaller signals', () => {
  it('gives concurrent attestations distinct signals, and reuses one only after its attestation ended unaborted with nobody listening', async () => {
    let release: () => void = () => undefined;
    const gate = new Promise<void>((r) => (release = r));
    const a = recording('unix', async () => {
      await gate;
      return ['unix:uid:1000'];
    });
    const attestors = new Map([['unix', a.attestor]]);
    const p1 = attestCaller(caller, attestors, logger);
    const p2 = attestCaller(caller, attestors, logger);
    await Promise.resolve();
    expect(a.signals).toHaveLength(2);
    expect(a.signals[0]).not.toBe(a.signals[1]);
    release();
    expect((await p1).selectors).toEqual(['unix:uid:1000']);
    await p2;
    expect(a.signals.every((s) => !s.aborted)).toBe(true);
    await attestCaller(caller, attestors, logger);
    // The third attestation ran alone, after both ended cleanly: its signal is one of theirs.
    expect([a.signals[0], a.signals[1]]).toContain(a.signals[2]);
    expect(a.signals[2]!.aborted).toBe(false);
  });

  it('aborts ("over") and never reuses a signal that something still listens to when the attestation ends', async () => {
    let heard: unknown;
    const a = recording('unix', async (signal) => {
      signal.addEventListener('abort', () => (heard = signal.reason), { once: true }); // left behind
      return ['unix:uid:1000'];
    });
    const attestors = new Map([['unix', a.attestor]]);
    await attestCaller(caller, attestors, logger);
    const first = a.signals[0]!;
    expect(first.aborted).toBe(true);
    expect((heard as Error).name).toBe('AbortError');
    expect((heard as Error).message).toBe('workload attestation is over');
    await attestCaller(caller, attestors, logger);
    expect(a.signals[1]).not.toBe(first);
  });

  it('aborts a timed-out attestation\'s signal with the timeout reason and never hands it out again', async () => {
    const d = new Deadlines(5);
    try {
      const slow = recording('unix', (signal) => new Promise((_r, reject) => signal.addEventListener('abort', () => reject(signal.reason as Error), { once: true })));
      const r = await attestCaller(caller, new Map([['unix', slow.attestor]]), logger, 20, d.schedule);
      expect(r).toEqual({ selectors: [], failed: ['unix'] });
      const timedOut = slow.signals[0]!;
      expect(timedOut.aborted).toBe(true);
      expect((timedOut.reason as Error).message).toBe('workload attestation timed out');
      const next = recording('unix');
      for (let i = 0; i < 5; i++) await attestCaller(caller, new Map([['unix', next.attestor]]), logger, 1000, d.schedule);
      expect(next.signals).not.toContain(timedOut);
      expect(next.signals.every((s) => !s.aborted)).toBe(true);
    } finally {
      d.clear();
    }
  });
});
