/**
 * Attack review (TDX verifier with Intel PCS enabled): PCS requests are budgeted per verifier, and
 * a lookup was made for any quote that merely parsed and carried the session's REPORTDATA — nothing
 * signed. So anyone could forge quotes (own PKI, any FMSPC) bound to their own session, make the
 * verifier spend 4 PCS requests on each, exhaust the budget and leave genuine TDs whose collateral
 * is not cached refused with `tdx.pcs_rate_limited`. The PCK chain (to the pinned root) and the
 * quote's signatures need no collateral, so they must hold before any PCS request.
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { sessionBinding } from '../../src/plugins/binding.js';
import type { SessionInput, VerifierPluginDeps } from '../../src/plugins/types.js';
import type { PcsFetch, PcsResponse } from '../../src/tdx/collateral.js';
import { createTdxVerifier } from '../../src/tdx/plugin.js';
import type { TdxCollateral } from '../../src/tdx/verify.js';
import { codeOfAsync } from '../support/codes.js';
import { MemoryState } from '../tpm/memory-state.js';
import { T0, makeCollateral, makeTdxQuote, makeTdxTestPki } from '../tdx/synthetic.js';

const pki = makeTdxTestPki();
/** The attacker's own "Intel" PKI, with a new FMSPC each time (no collateral cache helps). */
const attackerPki = (i: number) => makeTdxTestPki({ pck: { fmspc: Buffer.from(`00906ed5000${i}`, 'hex') } });
const vdeps = (): VerifierPluginDeps => ({ trustDomain: 'example.org', logger: pino({ level: 'silent' }), now: () => T0, state: new MemoryState(), configDir: '/nonexistent' });

function newSession(): SessionInput {
  const nonce = randomBytes(32);
  const csrSpki = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({ type: 'spki', format: 'der' });
  return { nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), now: T0 };
}

function pcs(col: TdxCollateral): { fetch: PcsFetch; urls: string[] } {
  const urls: string[] = [];
  const answer = (body: Uint8Array | string, headers: Record<string, string> = {}): PcsResponse => {
    const bytes = Buffer.from(body);
    return { ok: true, status: 200, headers: { get: (n: string) => headers[n] ?? null }, body: new ReadableStream({ start: (c) => (c.enqueue(new Uint8Array(bytes)), c.close()) }) };
  };
  const fetch: PcsFetch = async (url) => {
    urls.push(url);
    const chain = encodeURIComponent(col.tcbSigningChain);
    if (url.includes('/tdx/certification/v4/tcb?fmspc=')) return answer(col.tcbInfo, { 'TCB-Info-Issuer-Chain': chain });
    if (url.endsWith('/tdx/certification/v4/qe/identity')) return answer(col.qeIdentity, { 'SGX-Enclave-Identity-Issuer-Chain': chain });
    if (url.includes('/sgx/certification/v4/pckcrl?ca=platform')) return answer(col.pckCrl, { 'SGX-PCK-CRL-Issuer-Chain': encodeURIComponent(col.pckCrlIssuerChain) });
    if (url.endsWith('/root.der')) return answer(col.rootCrl);
    return { ok: false, status: 404, headers: { get: () => null }, body: null };
  };
  return { fetch, urls };
}

const PCS = { enabled: true, baseUrl: 'http://127.0.0.1:9', rootCrlUrl: 'http://127.0.0.1:9/root.der', maxRequestsPerMinute: 8 };

describe('tdx verifier: no PCS request for a quote that does not verify without collateral', () => {
  it('forged quotes bound to the attacker\'s own sessions neither reach PCS nor use up its budget', async () => {
    const p = pcs(makeCollateral(pki));
    const verifier = createTdxVerifier({ pcs: PCS, rootSha256: pki.rootSha256 }, vdeps(), { fetch: p.fetch });
    const send = (q: Buffer, s: SessionInput) => verifier.finish({ quote: q.toString('base64') }, {}, s);
    // Budget 8 = two collateral sets: on the old code the third forged quote already met tdx.pcs_rate_limited.
    for (let i = 0; i < 3; i++) {
      const s = newSession();
      expect(await codeOfAsync(send(makeTdxQuote(attackerPki(i), { reportData: Buffer.concat([s.binding, Buffer.alloc(32)]) }), s))).toBe('tdx.root_untrusted');
    }
    // A genuine chain with a quote signature that does not verify: refused before PCS too.
    const s1 = newSession();
    const tampered = makeTdxQuote(pki, { reportData: Buffer.concat([s1.binding, Buffer.alloc(32)]) });
    tampered[200]! ^= 1; // inside the TD report (MRTD), covered by the quote signature
    expect(await codeOfAsync(send(tampered, s1))).toBe('tdx.quote_signature_invalid');
    expect(p.urls).toEqual([]);
    // The genuine TD still gets its collateral.
    const s = newSession();
    const v = await send(makeTdxQuote(pki, { reportData: Buffer.concat([s.binding, Buffer.alloc(32)]) }), s);
    expect(v.selectors).toContain('tdx:tcb_status:UpToDate');
    expect(p.urls).toHaveLength(4);
  });
});
