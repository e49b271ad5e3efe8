/**
 * Attestation session slots expire after `sessionTtl` of elapsed time, whatever the wall clock
 * does. The ledger expires tickets in insertion order and stops at the first one not yet due; with
 * expiry times taken from the wall clock, a step back (NTP correction, VM restore) put the tickets
 * opened before the step "in the future" and, behind them, every ticket opened after it: abandoned
 * sessions then held their slots for as long as the step, and a flood filled the verifier for good.
 */
import { describe, expect, it } from 'vitest';
import { SessionLedger } from '../../src/verifier/attestation.js';

const limits = { sessionTtlSeconds: 10, maxSessions: 4, reservedSessions: 0, maxSessionsPerCredential: 4, maxSessionsPerAddress: 4 };

describe('session slots after the wall clock steps', () => {
  it('a step back of an hour does not keep slots past sessionTtl', () => {
    const l = new SessionLedger(limits);
    const t0 = 1_800_000_000_000;
    l.admit(['before-step'], 'a', t0);
    const back = t0 - 3_600_000;
    for (let i = 0; i < 3; i++) l.admit([`after-step-${i}`], 'b', back);
    expect(() => l.admit(['x'], 'c', back)).toThrow(expect.objectContaining({ code: 'attest.busy' }));
    // 10 s of real time later every one of them has lived its sessionTtl.
    l.admit(['y'], 'c', back + 10_000);
    expect(l.open).toBe(1);
  });

  it('a step forward expires what was open (as the datastore does) and the ledger keeps counting from there', () => {
    const l = new SessionLedger(limits);
    const t0 = 1_800_000_000_000;
    l.admit(['a'], 'a', t0);
    l.admit(['b'], 'b', t0 + 3_600_000);
    expect(l.open).toBe(1);
    l.admit(['c'], 'c', t0 + 3_600_000 + 9_999);
    expect(l.open).toBe(2);
    l.admit(['d'], 'd', t0 + 3_600_000 + 10_000);
    expect(l.open).toBe(2); // b expired, c still open
  });
});
