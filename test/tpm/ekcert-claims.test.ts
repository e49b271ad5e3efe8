/**
 * EK certificate outputs pinned byte for byte: for every chain in test/fixtures/tpm-ek/cases.json
 * (hand-built chains with TCG-profile layouts, several signature algorithms including SHA-1 and
 * RSASSA-PSS, vendor encoding quirks, and the two EK certificates of a manufactured swtpm with
 * its local CA) the selectors, claims (ekCertSerial, ekCertIssuer, TPM manufacturer/model/version,
 * ek_ca, ek_pubhash), key kind, public key comparison and error codes must be exactly what the
 * @peculiar/x509-based EK code emitted when the fixtures were recorded.
 *
 * The second part checks the certificates test/tpm/synthetic.ts makes (random serials) against
 * @peculiar/x509 itself, the library whose strings the claims have always carried.
 */
import 'reflect-metadata';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import * as x509 from '@peculiar/x509';
import { describe, expect, it } from 'vitest';
import { observe, type EkFixtureCase, type EkQuoteFixture, type Observed } from './ekcert-observe.js';
import { makeEkCert, makeIntermediate, makeRoot, p256KeyPair, rsaKeyPair } from './synthetic.js';

const file = fileURLToPath(new URL('../fixtures/tpm-ek/cases.json', import.meta.url));
const fixtures = JSON.parse(readFileSync(file, 'utf8')) as { quote: EkQuoteFixture; cases: (EkFixtureCase & { expect: Observed })[] };

describe('EK certificate outputs stay byte for byte the same (recorded fixtures)', () => {
  it('has the recorded cases, accepted and refused ones', () => {
    expect(fixtures.cases.length).toBeGreaterThanOrEqual(40);
    expect(fixtures.cases.filter((c) => c.expect.claims).length).toBeGreaterThanOrEqual(30);
    expect(fixtures.cases.filter((c) => c.expect.error).length).toBeGreaterThanOrEqual(8);
  });

  for (const c of fixtures.cases) {
    it(`${c.name}: ${c.about}`, async () => {
      expect(await observe(c, fixtures.quote)).toEqual(c.expect);
    });
  }
});

describe('EK certificate claims carry the strings @peculiar/x509 gives (synthetic.ts certificates)', () => {
  it('ekCertSerial and ekCertIssuer equal X509Certificate.serialNumber / .issuer', async () => {
    const root = await makeRoot('Sigil Oracle Root, "quoted" + plus');
    const inter = await makeIntermediate('Sigil Oracle Issuing CA', root);
    const quote = fixtures.quote;
    for (const key of [p256KeyPair(), rsaKeyPair(), p256KeyPair(), p256KeyPair()]) {
      const leaf = await makeEkCert(key.publicKey, inter);
      const c: EkFixtureCase = { name: 'synthetic', about: '', leaf: leaf.toString('base64'), intermediates: [inter.der.toString('base64')], ekCa: [root.der.toString('base64')], at: '2025-06-01T00:00:00Z' };
      const o = await observe(c, quote);
      const ref = new x509.X509Certificate(leaf);
      expect(o.claims?.ekCertSerial).toBe(ref.serialNumber);
      expect(o.claims?.ekCertIssuer).toBe(ref.issuer);
      expect(o.selectors).toContain('tpm:ek_model:ST33KTPM2X');
    }
  });
});
