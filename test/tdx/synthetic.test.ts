/** TDX quote verification against a synthetic Intel-like PKI and collateral made here (accept paths and attacks). */
import { describe, expect, it } from 'vitest';
import { verifyTdxQuote, type TdxVerifyOptions } from '../../src/tdx/verify.js';
import { codeOf } from '../support/codes.js';
import { DEFAULT_TEE_TCB_SVN, T0, makeCollateral, makeCrl, makeTdxQuote, makeTdxTestPki, signJson, tcbInfoText } from './synthetic.js';

const pki = makeTdxTestPki();
const opts = (o: Partial<TdxVerifyOptions> = {}): TdxVerifyOptions => ({ now: T0, rootSha256: pki.rootSha256, ...o });
const DAY = 86_400_000;

describe('tdx synthetic accept paths', () => {
  it('accepts a v4 quote (TD report 1.0) with UpToDate collateral and emits the DESIGN §4 selectors', () => {
    const rd = Buffer.concat([Buffer.alloc(32, 0xab), Buffer.alloc(32)]);
    const v = verifyTdxQuote(makeTdxQuote(pki, { reportData: rd }), makeCollateral(pki), opts({ expectedReportData: rd }));
    expect(v.tcbStatus).toBe('UpToDate');
    expect(v.selectors).toContain(`tdx:mrtd:${'d7'.repeat(48)}`);
    expect(v.selectors).toContain(`tdx:rtmr:2:${'32'.repeat(48)}`);
    expect(v.selectors).toContain('tdx:tcb_status:UpToDate');
    expect(v.selectors).toContain('tdx:fmspc:00806f050000');
    expect(v.selectors).toContain(`tdx:seam:mrseam:${'a1'.repeat(48)}`);
    expect(v.selectors).toContain('tdx:td_attributes:0000001000000000');
    expect(v.agentIdSuffix).toBe('11'.repeat(16));
    expect(v.claims.revocationChecked).toBe(true);
  });

  it('accepts v5 quotes with TD report 1.0 and 1.5 bodies', () => {
    const col = makeCollateral(pki);
    expect(verifyTdxQuote(makeTdxQuote(pki, { version: 5 }), col, opts()).quote.body.version).toBe('1.0');
    const v15 = verifyTdxQuote(makeTdxQuote(pki, { version: 5, body15: true }), col, opts());
    expect(v15.quote.body.version).toBe('1.5');
    expect(v15.claims.mrServiceTd).toBe('5e'.repeat(48));
  });

  it('matches a lower TCB level and reports its status and advisory IDs, accepted only when the policy lists it', () => {
    const q = makeTdxQuote(pki, { teeTcbSvn: [2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] });
    const col = makeCollateral(pki);
    expect(codeOf(() => verifyTdxQuote(q, col, opts()))).toBe('tdx.tcb_status_not_accepted');
    const v = verifyTdxQuote(q, col, opts({ acceptedTcbStatuses: ['UpToDate', 'OutOfDate'] }));
    expect(v.tcbStatus).toBe('OutOfDate');
    expect(v.advisoryIds).toEqual(['INTEL-SA-00837']);
  });

  it('an out-of-date QE makes an up-to-date platform OutOfDate', () => {
    const col = makeCollateral(pki, { qeIdentity: { isvSvn: 3, status: 'OutOfDate' } });
    const v = verifyTdxQuote(makeTdxQuote(pki, { qeIsvSvn: 3 }), col, opts({ acceptedTcbStatuses: ['OutOfDate'] }));
    expect(v.tcbStatus).toBe('OutOfDate');
    expect(v.claims.platformTcbStatus).toBe('UpToDate');
  });

  it('without collateral: TCB status Unknown only when the policy opts in', () => {
    const q = makeTdxQuote(pki);
    expect(codeOf(() => verifyTdxQuote(q, undefined, opts()))).toBe('tdx.collateral_missing');
    const v = verifyTdxQuote(q, undefined, opts({ allowUnknownTcb: true }));
    expect(v.tcbStatus).toBe('Unknown');
    expect(v.selectors).toContain('tdx:tcb_status:Unknown');
    expect(v.claims.revocationChecked).toBe(false);
  });
});

describe('tdx synthetic refusals', () => {
  const col = makeCollateral(pki);

  it('refuses a chain to another root (the default pin is the Intel SGX Root CA)', () => {
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki), col, { now: T0 }))).toBe('tdx.root_untrusted');
    const other = makeTdxTestPki();
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(other), col, opts()))).toBe('tdx.root_untrusted');
  });

  it('refuses a revoked PCK certificate (CRL made here) and a revoked Platform CA', () => {
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki), makeCollateral(pki, { revokedPck: [pki.pckSerial] }), opts()))).toBe('tdx.cert_revoked');
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki), makeCollateral(pki, { revokedByRoot: [Buffer.from([2])] }), opts()))).toBe('tdx.cert_revoked');
  });

  it('refuses a PCK CRL signed by another key, or issued by another CA', () => {
    const forged = { ...col, pckCrl: makeCrl(pki.root.privateKey, 'Intel SGX PCK Platform CA', [], new Date(T0.getTime() - DAY), new Date(T0.getTime() + DAY)) };
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki), forged, opts()))).toBe('tdx.crl_signature_invalid');
    const wrongIssuer = { ...col, pckCrl: makeCrl(pki.platform.privateKey, 'Intel SGX PCK Processor CA', [], new Date(T0.getTime() - DAY), new Date(T0.getTime() + DAY)) };
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki), wrongIssuer, opts()))).toBe('tdx.crl_issuer_mismatch');
  });

  it('refuses expired collateral, CRLs and certificates, and stale collateral under maxCollateralAgeMs', () => {
    const q = makeTdxQuote(pki);
    expect(codeOf(() => verifyTdxQuote(q, col, opts({ now: new Date(T0.getTime() + 30 * DAY) })))).toBe('tdx.collateral_expired');
    const oldCrl = makeCollateral(pki, { crlNextUpdate: new Date(T0.getTime() - 1000) });
    expect(codeOf(() => verifyTdxQuote(q, oldCrl, opts()))).toBe('tdx.crl_expired');
    expect(codeOf(() => verifyTdxQuote(q, col, opts({ now: new Date(T0.getTime() + 400 * DAY) })))).toBe('tdx.cert_expired');
    expect(codeOf(() => verifyTdxQuote(q, col, opts({ maxCollateralAgeMs: 3_600_000 })))).toBe('tdx.collateral_stale');
    expect(codeOf(() => verifyTdxQuote(q, col, opts({ now: new Date(T0.getTime() - 2 * DAY) })))).toBe('tdx.collateral_not_yet_valid');
  });

  it('refuses a debug TD unless allowed', () => {
    const q = makeTdxQuote(pki, { tdAttributes: Buffer.from('0100001000000000', 'hex') });
    expect(codeOf(() => verifyTdxQuote(q, col, opts()))).toBe('tdx.debug_not_allowed');
    expect(verifyTdxQuote(q, col, opts({ allowDebug: true })).claims.debug).toBe(true);
  });

  it('refuses wrong REPORTDATA', () => {
    const q = makeTdxQuote(pki, { reportData: Buffer.alloc(64, 1) });
    expect(codeOf(() => verifyTdxQuote(q, col, opts({ expectedReportData: Buffer.alloc(64, 2) })))).toBe('tdx.report_data_mismatch');
    expect(codeOf(() => verifyTdxQuote(q, col, opts({ expectedReportData: Buffer.alloc(32, 1) })))).toBe('tdx.report_data_invalid');
  });

  it('refuses a TEE_TCB_SVN below every level, naming the unmatched level', () => {
    const q = makeTdxQuote(pki, { teeTcbSvn: [1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] });
    expect(codeOf(() => verifyTdxQuote(q, col, opts()))).toBe('tdx.tcb_level_unmatched');
    expect(() => verifyTdxQuote(q, col, opts())).toThrow(/TEE_TCB_SVN 01000100000000000000000000000000; the highest level needs .*TCB level not supported/);
  });

  it('refuses TCB Info for another FMSPC and QE identity mismatches', () => {
    const other = makeCollateral(pki, { tcbInfo: { fmspc: '00906ed50000' } });
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki), other, opts()))).toBe('tdx.fmspc_mismatch');
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki, { qeIsvSvn: 2 }), col, opts()))).toBe('tdx.qe_tcb_level_unmatched');
    const seam = makeCollateral(pki, { tcbInfo: { mrSignerSeam: 'ff'.repeat(48) } });
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki), seam, opts()))).toBe('tdx.module_mismatch');
  });

  it('refuses a TCB Info whose signature was made over re-serialized JSON, and re-serialized JSON under a valid signature', () => {
    const text = tcbInfoText();
    const pretty = JSON.stringify(JSON.parse(text), null, 1);
    // Signed over the compact text, delivered pretty-printed (same value, other bytes).
    const sig = JSON.parse(signJson('tcbInfo', text, pki.signing.privateKey).toString()).signature as string;
    const resent = Buffer.from(`{"tcbInfo":${pretty},"signature":"${sig}"}`);
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki), { ...col, tcbInfo: resent }, opts()))).toBe('tdx.collateral_signature_invalid');
    // Whitespace between members outside the signed value is fine.
    const spaced = Buffer.from(`{ "tcbInfo" : ${text} ,\n "signature" : "${sig}" }`);
    expect(verifyTdxQuote(makeTdxQuote(pki), { ...col, tcbInfo: spaced }, opts()).tcbStatus).toBe('UpToDate');
  });

  it('refuses malformed collateral JSON with tdx.collateral_malformed', () => {
    const q = makeTdxQuote(pki);
    const bad = [
      '',
      '{',
      '[]',
      '{"tcbInfo":{}}',
      `{"tcbInfo":{},"signature":"${'00'.repeat(64)}","extra":1}`,
      `{"tcbInfo":{},"tcbInfo":{},"signature":"${'00'.repeat(64)}"}`,
      `{"tcbInfo":{},"signature":"abc"}`,
      `{"tcbInfo":{},"signature":"${'00'.repeat(64)}"} x`,
    ];
    for (const b of bad) expect(codeOf(() => verifyTdxQuote(q, { ...col, tcbInfo: Buffer.from(b) }, opts())), b).toBe('tdx.collateral_malformed');
    // Well signed but the wrong shape.
    const shapes = ['{"id":"SGX","version":3}', tcbInfoText().replace('"version":3', '"version":2'), tcbInfoText().replace('"UpToDate"', '"Fine"')];
    for (const s of shapes) expect(codeOf(() => verifyTdxQuote(q, { ...col, tcbInfo: signJson('tcbInfo', s, pki.signing.privateKey) }, opts())), s).toBe('tdx.collateral_malformed');
  });

  it('refuses every single-bit flip in the signed JSON collateral with a signature error', () => {
    const q = makeTdxQuote(pki);
    const doc = col.tcbInfo as Buffer;
    const start = doc.indexOf('{', 1);
    const end = doc.lastIndexOf(',"signature"');
    let n = 0;
    for (let i = start; i < end; i += 13) {
      for (const bit of [0, 5]) {
        const m = Buffer.from(doc);
        m[i]! ^= 1 << bit;
        const code = codeOf(() => verifyTdxQuote(q, { ...col, tcbInfo: m }, opts()));
        expect(['tdx.collateral_signature_invalid', 'tdx.collateral_malformed'], `byte ${i} bit ${bit}`).toContain(code);
        n++;
      }
    }
    expect(n).toBeGreaterThan(80);
  });

  it('refuses bit flips in the QE Identity JSON, malformed CRLs and collateral chains with extra or missing certificates', () => {
    const q = makeTdxQuote(pki);
    const doc = col.qeIdentity as Buffer;
    const start = doc.indexOf('{', 1);
    const end = doc.lastIndexOf(',"signature"');
    for (let i = start; i < end; i += 17) {
      const m = Buffer.from(doc);
      m[i]! ^= 0x02;
      expect(['tdx.collateral_signature_invalid', 'tdx.collateral_malformed'], `byte ${i}`).toContain(codeOf(() => verifyTdxQuote(q, { ...col, qeIdentity: m }, opts())));
    }
    const crl = Buffer.from(col.pckCrl);
    expect(codeOf(() => verifyTdxQuote(q, { ...col, pckCrl: crl.subarray(0, crl.length - 1) }, opts()))).toBe('tdx.crl_malformed');
    expect(codeOf(() => verifyTdxQuote(q, { ...col, rootCrl: Buffer.concat([col.rootCrl, Buffer.from([0])]) }, opts()))).toBe('tdx.crl_malformed');
    const flipped = Buffer.from(col.rootCrl);
    flipped[flipped.length - 5]! ^= 1;
    expect(codeOf(() => verifyTdxQuote(q, { ...col, rootCrl: flipped }, opts()))).toBe('tdx.crl_signature_invalid');
    const [signingLeaf, root] = col.tcbSigningChain.split(/(?<=-----END CERTIFICATE-----\n)/);
    expect(codeOf(() => verifyTdxQuote(q, { ...col, tcbSigningChain: signingLeaf! }, opts()))).toBe('tdx.tcb_signing_chain_malformed');
    expect(codeOf(() => verifyTdxQuote(q, { ...col, tcbSigningChain: col.tcbSigningChain + root! }, opts()))).toBe('tdx.tcb_signing_chain_malformed');
    expect(codeOf(() => verifyTdxQuote(q, { ...col, pckCrlIssuerChain: 'x' }, opts()))).toBe('tdx.pck_crl_issuer_chain_malformed');
  });

  it('refuses a PCK chain with a missing or an extra certificate, or garbage', () => {
    const [leaf, ca, root] = pki.pckChainPem.split(/(?<=-----END CERTIFICATE-----\n)/);
    for (const pem of [leaf! + root!, leaf! + ca!, pki.pckChainPem + root!]) {
      expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki, { pckChainPem: pem }), col, opts()))).toBe('tdx.pck_chain_malformed');
    }
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki, { pckChainPem: 'hello' }), col, opts()))).toBe('tdx.pck_chain_malformed');
    expect(codeOf(() => verifyTdxQuote(makeTdxQuote(pki, { pckChainPem: root! + ca! + leaf! }), col, opts()))).toBe('tdx.root_untrusted');
  });

  it('checks TEE_TCB_SVN from byte 2 with a TDX module identity when the module major version is not 0', () => {
    // Module major 1 without a tdxModuleIdentities entry in the TCB Info: refused.
    const q = makeTdxQuote(pki, { teeTcbSvn: [3, 1, ...DEFAULT_TEE_TCB_SVN.slice(2)] });
    expect(codeOf(() => verifyTdxQuote(q, col, opts()))).toBe('tdx.module_mismatch');
  });
});

describe('tdx caches never outlive a check', () => {
  it('a cached PCK chain and collateral set are checked again outside their validity windows', () => {
    const p = makeTdxTestPki();
    const q = makeTdxQuote(p);
    const col = makeCollateral(p);
    const o = { rootSha256: p.rootSha256 };
    expect(verifyTdxQuote(q, col, { now: T0, ...o }).tcbStatus).toBe('UpToDate'); // fills every cache
    expect(codeOf(() => verifyTdxQuote(q, col, { now: new Date(T0.getTime() + 30 * DAY), ...o }))).toBe('tdx.collateral_expired');
    expect(codeOf(() => verifyTdxQuote(q, undefined, { now: new Date(T0.getTime() + 400 * DAY), allowUnknownTcb: true, ...o }))).toBe('tdx.cert_expired');
    expect(verifyTdxQuote(q, col, { now: T0, ...o }).tcbStatus).toBe('UpToDate');
  });

  it('a memoised QE report signature does not carry over to another signature or PCK', () => {
    const p = makeTdxTestPki();
    const q = makeTdxQuote(p);
    expect(verifyTdxQuote(q, undefined, { now: T0, allowUnknownTcb: true, rootSha256: p.rootSha256 }).tcbStatus).toBe('Unknown');
    const qeSigAt = 48 + 584 + 4 + 128 + 6 + 384;
    const m = Buffer.from(q);
    m[qeSigAt + 3]! ^= 0x10;
    expect(codeOf(() => verifyTdxQuote(m, undefined, { now: T0, allowUnknownTcb: true, rootSha256: p.rootSha256 }))).toBe('tdx.qe_report_signature_invalid');
  });

  it('refuses an attestation key that is not a curve point', () => {
    const q = makeTdxQuote(pki);
    const m = Buffer.from(q);
    Buffer.alloc(64, 0x01).copy(m, 48 + 584 + 4 + 64);
    expect(codeOf(() => verifyTdxQuote(m, undefined, opts({ allowUnknownTcb: true })))).toBe('tdx.attestation_key_invalid');
  });
});
