/**
 * Attack review: the PEM splitter trimmed each line's trailing blanks with /[ \t]+$/, which V8
 * runs in time quadratic in a run of blanks that is not at the end of the line (every start
 * position re-scans the run). PEM reaches the splitter from peers: the PCK certificate chain
 * inside a TDX quote, federated bundles (SpiffeBundle.fromPem), CRLs given as PEM. One line of
 * 150 000 spaces and an 'x' (150 KB, far under the 4 MiB cap) cost seconds; 4 MiB costs hours.
 */
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { pemBlocks, pemToDers } from '../../src/x509/pem.js';
import { parseCrl } from '../../src/x509/crl.js';

const RUN = ' '.repeat(150_000);

function timed(f: () => unknown): { code: string; ms: number } {
  const t0 = performance.now();
  let code = 'no error';
  try {
    f();
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    code = (e as SigilError).code;
  }
  return { code, ms: performance.now() - t0 };
}

describe('attack: long runs of blanks in PEM text', () => {
  it('inside a CERTIFICATE block: refused in linear time', () => {
    const r = timed(() => pemToDers(`-----BEGIN CERTIFICATE-----\nMIIB${RUN}x\n-----END CERTIFICATE-----\n`));
    expect(r.code).toBe('pem.malformed');
    expect(r.ms).toBeLessThan(1000);
  });

  it('outside any block (lax): refused in linear time', () => {
    const r = timed(() => pemBlocks(`a${RUN}-----x\n`, 'CERTIFICATE', { lax: true }));
    expect(r.code).toBe('pem.malformed');
    expect(r.ms).toBeLessThan(1000);
  });

  it('a PEM CRL: refused in linear time', () => {
    const r = timed(() => parseCrl(Buffer.from(`-----BEGIN X509 CRL-----\n${RUN}x\n-----END X509 CRL-----\n`)));
    expect(r.code).toBe('x509.crl_malformed');
    expect(r.ms).toBeLessThan(1000);
  });

  it('trailing blanks at the end of a line are still tolerated (control)', () => {
    const der = Buffer.from('3003020101', 'hex');
    const b64 = der.toString('base64');
    expect(pemToDers(`-----BEGIN CERTIFICATE----- \t\n${b64}   \n-----END CERTIFICATE-----\t\n`)).toEqual([der]);
  });
});
