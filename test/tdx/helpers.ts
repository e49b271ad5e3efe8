/** Shared helpers for the TDX tests (real evidence from ../shared/testdata/tdx). */
import { readFileSync } from 'node:fs';
import { td } from '../support/testdata.js';
import type { TdxCollateral } from '../../src/tdx/verify.js';

/** The quote is the first 4935 bytes of both files (README: 39 test bytes follow the SPR quote; the COS buffer is zero-padded). */
export const QUOTE_LENGTH = 4935;
export const SPR_AT = new Date('2023-07-01T01:00:00Z');
/** Inside the COS quote's PCK certificate validity (2024-07-02 → 2031-07-02). */
export const COS_AT = new Date('2025-06-01T00:00:00Z');

export function tdxFile(name: string): Buffer {
  return readFileSync(td('tdx', name));
}

export const sprQuoteFile = (): Buffer => tdxFile('tdx_prod_quote_SPR_E4.dat');
export const sprQuote = (): Buffer => sprQuoteFile().subarray(0, QUOTE_LENGTH);
export const cosQuote = (): Buffer => tdxFile('cos-113-tdx-quote.dat').subarray(0, QUOTE_LENGTH);

export function sprCollateral(): TdxCollateral {
  return {
    tcbInfo: tdxFile('sample_tcbInfo_response'),
    qeIdentity: tdxFile('sample_qeIdentity_response'),
    tcbSigningChain: tdxFile('tcb-signing-chain.pem').toString('latin1'),
    pckCrl: tdxFile('pckcrl'),
    pckCrlIssuerChain: tdxFile('pck-crl-issuer-chain.pem').toString('latin1'),
    rootCrl: tdxFile('rootcrl.der'),
  };
}

/** The collateral in the shape @phala/dcap-qvl takes (signed JSON text cut from the bytes as received). */
export function oracleCollateral(c: TdxCollateral, hexBinary: boolean): Record<string, unknown> {
  const inner = (b: Uint8Array, member: string): { text: string; sig: string } => {
    const s = Buffer.from(b).toString('utf8');
    const m = new RegExp(`^\\{"${member}":(\\{.*\\}),"signature":"([0-9a-fA-F]+)"\\}\\s*$`, 's').exec(s);
    if (!m) throw new Error(`oracle collateral: unexpected ${member} document`);
    return { text: m[1]!, sig: m[2]! };
  };
  const t = inner(c.tcbInfo, 'tcbInfo');
  const q = inner(c.qeIdentity, 'enclaveIdentity');
  const bin = (b: Uint8Array | string): unknown => (hexBinary ? Buffer.from(b as Uint8Array).toString('hex') : Array.from(b as Uint8Array));
  return {
    pck_crl_issuer_chain: c.pckCrlIssuerChain,
    root_ca_crl: bin(c.rootCrl),
    pck_crl: bin(c.pckCrl),
    tcb_info_issuer_chain: c.tcbSigningChain,
    tcb_info: t.text,
    tcb_info_signature: hexBinary ? t.sig : Array.from(Buffer.from(t.sig, 'hex')),
    qe_identity_issuer_chain: c.tcbSigningChain,
    qe_identity: q.text,
    qe_identity_signature: hexBinary ? q.sig : Array.from(Buffer.from(q.sig, 'hex')),
  };
}
