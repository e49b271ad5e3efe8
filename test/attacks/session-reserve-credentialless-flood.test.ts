/**
 * The session reserve (issue 11 item 4: "keep a reserve so that a legitimate agent still attests
 * during the flood") went to any hello whose address and credentials held no open session. A hello
 * of an attestor without a credential (`tdx`, `aws_nitro`, `sev_snp`: `begin` checks nothing the
 * attacker lacks) presents no credential at all, so an attacker needs only addresses — one IPv6
 * /56 holds 256 /64 buckets — to fill every slot, the reserve included; DESIGN's known limitation
 * assumed "many addresses *and* many valid credentials". The reserve now goes only to hellos that
 * present a credential (TPM EK, join token, a plugin's credentialKey) holding no session, from an
 * address holding none: a flood without credentials stops at maxSessions − reservedSessions.
 */
import { describe, expect, it } from 'vitest';
import type { SigilError } from '../../src/errors.js';
import { addressBucket, SessionLedger } from '../../src/verifier/attestation.js';

const limits = { sessionTtlSeconds: 30, maxSessions: 10, reservedSessions: 4, maxSessionsPerCredential: 4, maxSessionsPerAddress: 2 };

function flood(l: SessionLedger, now: number): { opened: number; refusedWith: string } {
  for (let i = 0; ; i++) {
    try {
      l.admit([], addressBucket(`2001:db8:0:${i.toString(16)}::1`), now);
    } catch (e) {
      return { opened: i, refusedWith: (e as SigilError).code };
    }
  }
}

describe('a flood of credential-less hellos from many /64s', () => {
  it('leaves the reserve to a hello with a credential', () => {
    const l = new SessionLedger(limits);
    const f = flood(l, 0);
    expect(f).toEqual({ opened: 6, refusedWith: 'attest.busy_reserved' });
    // A real agent with a join token (or a TPM EK) from an address of its own still gets a session.
    expect(() => l.admit(['token-digest'], '198.51.100.7', 1)).not.toThrow();
  });

  it('a credential-less hello still gets the slots outside the reserve', () => {
    const l = new SessionLedger(limits);
    for (let i = 0; i < 6; i++) l.admit([], `192.0.2.${i}`, 0);
    expect(() => l.admit([], '192.0.2.200', 0)).toThrow(expect.objectContaining({ code: 'attest.busy_reserved' }));
  });
});
