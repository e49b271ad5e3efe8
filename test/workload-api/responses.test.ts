/**
 * The response cache (src/agent/workload-api/responses.ts): callers with the same selectors share
 * one framed buffer, a source change (clear()) rebuilds it from the new SVIDs, a selector set
 * without SVIDs is remembered as "none", and a JWT-SVID response is re-encoded only when its
 * tokens change.
 */
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { x509KeyOf, type ConnAttestation } from '../../src/agent/workload-api/connection.js';
import { workloadCodecs } from '../../src/agent/workload-api/proto.js';
import { ResponseCache } from '../../src/agent/workload-api/responses.js';
import type { JwtSvidResult } from '../../src/agent/identity-source.js';
import { FakeSource, TD } from './support.js';

const attestation = (selectors: string[]): ConnAttestation => ({ selectors, failed: [], x509Key: x509KeyOf(selectors), until: 0 });

function decodeX509(framed: Buffer): { svids: { spiffe_id: string; x509_svid: Buffer }[] } {
  expect(framed[0]).toBe(0); // not compressed
  expect(framed.readUInt32BE(1)).toBe(framed.length - 5);
  return workloadCodecs().X509SVIDResponse.decode(framed.subarray(5)) as unknown as { svids: { spiffe_id: string; x509_svid: Buffer }[] };
}

describe('ResponseCache', () => {
  it('shares one framed X.509 response per selector set until the source changes', () => {
    const src = new FakeSource();
    src.addEntry({ id: 'a', spiffeId: `spiffe://${TD}/a`, selectors: ['unix:uid:1'] });
    const cache = new ResponseCache(src, pino({ level: 'silent' }), TD);
    const first = cache.x509For(attestation(['unix:uid:1']))!;
    expect(decodeX509(first).svids.map((s) => s.spiffe_id)).toEqual([`spiffe://${TD}/a`]);
    expect(cache.x509For(attestation(['unix:uid:1']))).toBe(first);
    expect(cache.x509For(attestation(['unix:uid:2']))).toBeNull();

    const rotated = src.rotate('a');
    // Until the server clears it on the source's change, the old response is served…
    expect(cache.x509For(attestation(['unix:uid:1']))).toBe(first);
    cache.clear();
    // …and then the new SVID.
    const next = cache.x509For(attestation(['unix:uid:1']))!;
    expect(next).not.toBe(first);
    expect(Buffer.compare(decodeX509(next).svids[0]!.x509_svid, Buffer.concat(rotated.chainDer))).toBe(0);
  });

  it('re-encodes a JWT-SVID response only when its tokens change', () => {
    const cache = new ResponseCache(new FakeSource(), pino({ level: 'silent' }), TD);
    const r1: JwtSvidResult = { spiffeId: `spiffe://${TD}/a`, token: 'a.b.c', hint: '', expiresAt: new Date() };
    const r2: JwtSvidResult = { ...r1, token: 'd.e.f' };
    const one = cache.jwt([r1]);
    expect(cache.jwt([r1])).toBe(one);
    const two = cache.jwt([r1, r2]);
    expect(two).not.toBe(one);
    const decoded = workloadCodecs().JWTSVIDResponse.decode(two.subarray(5)) as unknown as { svids: { svid: string }[] };
    expect(decoded.svids.map((s) => s.svid)).toEqual(['a.b.c', 'd.e.f']);
    expect(cache.jwt([{ ...r1 }])).not.toBe(one); // a refreshed token is a new object
  });
});

describe('x509KeyOf', () => {
  it('gives two different selector sets different keys even when a value holds a NUL', () => {
    // Joined with NUL, ['k8s:pod_label:a\0b'] and ['k8s:pod_label:a', 'b'] were one key: one
    // caller's cached SVID response could then be served to the other.
    expect(x509KeyOf(['k8s:pod_label:a\0b'])).not.toBe(x509KeyOf(['k8s:pod_label:a', 'b']));
    expect(x509KeyOf(['unix:uid:0', 'unix:gid:0'])).not.toBe(x509KeyOf(['unix:uid:0\0unix:gid:0']));
    expect(x509KeyOf(['unix:uid:0'])).toBe(x509KeyOf(['unix:uid:0']));
  });
});
