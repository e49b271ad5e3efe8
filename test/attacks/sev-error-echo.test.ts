/**
 * Attack: make the sev_snp verifier copy large attacker-chosen strings into its error messages
 * (returned to the caller and, with the attestor prefix, passed on to logs and records): a JSON
 * key of the hello/response, or the productName of a (not yet verified) VCEK. Messages must quote
 * at most a short, escaped excerpt.
 */
import { AsnConvert } from '@peculiar/asn1-schema';
import { Certificate } from '@peculiar/asn1-x509';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { createSevVerifier } from '../../src/sev/plugin.js';
import { reportDataForBinding, verifySnpEvidence } from '../../src/sev/verify.js';
import { makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';

const NOW = new Date('2026-01-01T00:00:00Z');
const milan = makeSnpTestChain('milan');
const deps = { configDir: '/tmp', logger: { warn() {}, info() {}, debug() {}, error() {} } } as never;
const MAX = 400;

async function messageOf(p: Promise<unknown>): Promise<SigilError> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return e as SigilError;
  }
  throw new Error('no error');
}

/** The synthetic VCEK with its productName extension (1.3.6.1.4.1.3704.1.2) replaced by an IA5String of `name`. */
function vcekWithProductName(name: string): Buffer {
  const cert = AsnConvert.parse(milan.endorsement, Certificate);
  const ext = cert.tbsCertificate.extensions!.find((e) => e.extnID === '1.3.6.1.4.1.3704.1.2')!;
  const body = Buffer.from(name, 'latin1');
  const len = body.length < 128 ? Buffer.from([body.length]) : Buffer.from([0x82, body.length >> 8, body.length & 0xff]);
  ext.extnValue = new (ext.extnValue.constructor as new (b: ArrayBuffer) => typeof ext.extnValue)(
    new Uint8Array(Buffer.concat([Buffer.from([0x16]), len, body])).buffer,
  );
  return Buffer.from(AsnConvert.serialize(cert));
}

describe('sev_snp error messages quote attacker strings only in short, escaped form', () => {
  const huge = 'k'.repeat(100_000);

  it('an unknown key in the hello', async () => {
    const v = createSevVerifier({}, deps);
    const e = await messageOf(v.begin({ [huge]: 1 }, {} as never));
    expect(e.code).toBe('sev.payload_invalid');
    expect(e.message.length).toBeLessThan(MAX);
  });

  it('an unknown key in hello.certs and in the response', async () => {
    const v = createSevVerifier({}, deps);
    const e1 = await messageOf(v.begin({ certs: { [huge]: 'AA==' } }, {} as never));
    expect(e1.code).toBe('sev.payload_invalid');
    expect(e1.message.length).toBeLessThan(MAX);
    const e2 = await messageOf(v.finish({ [huge]: 1 }, { certs: {} }, { binding: Buffer.alloc(32), now: NOW } as never));
    expect(e2.code).toBe('sev.payload_invalid');
    expect(e2.message.length).toBeLessThan(MAX);
  });

  it('the productName of an unverified VCEK (long, with control characters)', () => {
    const rd = reportDataForBinding(Buffer.alloc(32, 1));
    const report = makeSnpReport({ chain: milan, reportData: rd, version: 3 });
    const vcek = vcekWithProductName(`\u001b[2J\n${'x'.repeat(12_000)}`);
    let err: unknown;
    try {
      verifySnpEvidence({ report, endorsementCert: vcek, chain: milan.chainDer }, { now: NOW, expectedReportData: rd, arkSha256: milan.arkPins });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SigilError);
    const e = err as SigilError;
    expect(e.code).toBe('sev.vcek_extension_invalid');
    expect(e.message.length).toBeLessThan(MAX);
    expect([...e.message].some((c) => c.charCodeAt(0) < 0x20)).toBe(false);
  });
});
