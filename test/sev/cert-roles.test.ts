/**
 * Certificate role rules of the AMD chain (src/sev/certs.ts): the ARK and the ASK/ASVK must carry
 * basicConstraints CA:TRUE and keyUsage keyCertSign (every real AMD ARK/ASK/ASVK does); the
 * VCEK/VLEK must not claim CA:TRUE or keyCertSign. Test chains are rebuilt from the synthetic ones
 * with chosen extensions and re-signed with fresh RSA keys (RSASSA-PSS SHA-384, salt 48), then
 * trusted only through the `arkSha256` override.
 */
import { createHash, generateKeyPairSync, sign, constants, type KeyObject } from 'node:crypto';
import { AsnConvert, OctetString } from '@peculiar/asn1-schema';
import {
  BasicConstraints,
  Certificate,
  Extension,
  Extensions,
  KeyUsage,
  KeyUsageFlags,
  SubjectPublicKeyInfo,
  TBSCertificate,
  id_ce_basicConstraints,
  id_ce_keyUsage,
} from '@peculiar/asn1-x509';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { parseSevCert, resolveArkPins, verifyEndorsementChain, verifyIssuerChain } from '../../src/sev/certs.js';
import { verifySnpEvidence } from '../../src/sev/verify.js';
import { type SnpTestChain, makeSnpReport, makeSnpTestChain } from '../support/sev-synthetic.js';
import { requireTestdata } from '../support/testdata.js';
import { MILAN_AT, TURIN_AT, codeOf, sevChain, sevFile } from './helpers.js';

const NOW = new Date('2026-01-01T00:00:00Z');

/** What a rebuilt certificate carries: `undefined` leaves the extension out. */
interface Roles {
  ca?: boolean;
  usage?: number;
}
const CA_ROLES: Roles = { ca: true, usage: KeyUsageFlags.keyCertSign | KeyUsageFlags.cRLSign };

function roleExtensions(r: Roles): Extension[] {
  const out: Extension[] = [];
  if (r.usage !== undefined) out.push(new Extension({ extnID: id_ce_keyUsage, critical: true, extnValue: new OctetString(AsnConvert.serialize(new KeyUsage(r.usage))) }));
  if (r.ca !== undefined) {
    out.push(new Extension({ extnID: id_ce_basicConstraints, critical: true, extnValue: new OctetString(AsnConvert.serialize(new BasicConstraints({ cA: r.ca }))) }));
  }
  return out;
}

/**
 * Re-issue `der` (same names, validity, serial and other extensions) with the role extensions
 * replaced by `roles`, optionally a new subject key, signed by `signer`.
 */
function reissue(der: Buffer, roles: Roles, signer: KeyObject, spki?: Buffer): Buffer {
  const orig = AsnConvert.parse(der, Certificate);
  const t = orig.tbsCertificate;
  const kept = (t.extensions ?? []).filter((e) => e.extnID !== id_ce_basicConstraints && e.extnID !== id_ce_keyUsage);
  const tbs = new TBSCertificate({
    version: t.version,
    serialNumber: t.serialNumber,
    signature: t.signature,
    issuer: t.issuer,
    validity: t.validity,
    subject: t.subject,
    subjectPublicKeyInfo: spki ? AsnConvert.parse(spki, SubjectPublicKeyInfo) : t.subjectPublicKeyInfo,
    // RFC 5280: extensions is SEQUENCE SIZE (1..MAX); a certificate with none omits the field.
    ...(roleExtensions(roles).length + kept.length > 0 ? { extensions: new Extensions([...roleExtensions(roles), ...kept]) } : {}),
  });
  const tbsDer = Buffer.from(AsnConvert.serialize(tbs));
  const sig = sign('sha384', tbsDer, { key: signer, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 48 });
  const cert = new Certificate({ tbsCertificate: tbs, signatureAlgorithm: orig.signatureAlgorithm, signatureValue: sig.buffer.slice(sig.byteOffset, sig.byteOffset + sig.byteLength) });
  return Buffer.from(AsnConvert.serialize(cert));
}

const arkKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
const interKey = generateKeyPairSync('rsa', { modulusLength: 2048 });
const spkiOf = (k: KeyObject): Buffer => k.export({ type: 'spki', format: 'der' });

interface Rebuilt {
  base: SnpTestChain;
  ark: Buffer;
  intermediate: Buffer;
  leaf: Buffer;
  pins: Record<string, string>;
}

/** A chain like `base` whose ARK, ASK/ASVK and VCEK/VLEK carry the given role extensions. */
function rebuild(base: SnpTestChain, o: { ark?: Roles; inter?: Roles; leaf?: Roles } = {}): Rebuilt {
  const ark = reissue(base.ark, o.ark ?? CA_ROLES, arkKey.privateKey, spkiOf(arkKey.publicKey));
  const intermediate = reissue(base.intermediate, o.inter ?? { ca: true, usage: KeyUsageFlags.keyCertSign }, arkKey.privateKey, spkiOf(interKey.publicKey));
  const leaf = reissue(base.endorsement, o.leaf ?? {}, interKey.privateKey);
  return { base, ark, intermediate, leaf, pins: { [base.product]: createHash('sha256').update(ark).digest('hex') } };
}

function verifyRebuilt(r: Rebuilt) {
  const report = makeSnpReport({ chain: r.base });
  return verifySnpEvidence({ report, endorsementCert: r.leaf, chain: [r.intermediate, r.ark] }, { now: NOW, arkSha256: r.pins });
}

/** The SigilError `fn` throws (fails the test if it returns or throws anything else). */
function errorOf(fn: () => unknown): SigilError {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return e as SigilError;
  }
  throw new Error('expected a SigilError, got none');
}

const milan = makeSnpTestChain('milan', { keyTag: 'roles' });
const milanVlek = makeSnpTestChain('milan', { keyTag: 'roles', signingKey: 'vlek' });
const turin = makeSnpTestChain('turin', { keyTag: 'roles' });

describe('rebuilt chains with AMD-like role extensions verify', () => {
  it('VCEK (Milan, Turin) and VLEK chains with CA:TRUE + keyCertSign issuers and a plain leaf', () => {
    for (const base of [milan, turin, milanVlek]) {
      const v = verifyRebuilt(rebuild(base));
      expect(v.product).toBe(base.product);
      expect(v.signingKey).toBe(base.signingKey);
    }
  });
  it('a leaf with CA:FALSE or keyUsage digitalSignature only is still an end-entity', () => {
    expect(codeOf(() => verifyRebuilt(rebuild(milan, { leaf: { ca: false } })))).toBe('no error');
    expect(codeOf(() => verifyRebuilt(rebuild(milan, { leaf: { usage: KeyUsageFlags.digitalSignature } })))).toBe('no error');
    expect(codeOf(() => verifyRebuilt(rebuild(milan, { leaf: { ca: false, usage: KeyUsageFlags.digitalSignature } })))).toBe('no error');
  });
});

describe('ARK and ASK/ASVK must be CAs allowed to sign certificates', () => {
  const cases: [string, { ark?: Roles; inter?: Roles }, string, RegExp][] = [
    ['ARK without keyUsage', { ark: { ca: true } }, 'ARK', /ARK certificate \(CN=ARK-Milan\) has no keyUsage extension/],
    ['ARK keyUsage without keyCertSign', { ark: { ca: true, usage: KeyUsageFlags.cRLSign } }, 'ARK', /ARK certificate \(CN=ARK-Milan\) keyUsage lacks keyCertSign/],
    ['ARK without basicConstraints', { ark: { usage: KeyUsageFlags.keyCertSign } }, 'ARK', /ARK certificate \(CN=ARK-Milan\) has no basicConstraints extension/],
    ['ARK with CA:FALSE', { ark: { ca: false, usage: KeyUsageFlags.keyCertSign } }, 'ARK', /ARK certificate \(CN=ARK-Milan\) has basicConstraints CA:FALSE/],
    ['ASK without keyUsage', { inter: { ca: true } }, 'ASK', /ASK certificate \(CN=SEV-Milan\) has no keyUsage extension/],
    ['ASK keyUsage without keyCertSign', { inter: { ca: true, usage: KeyUsageFlags.digitalSignature } }, 'ASK', /ASK certificate \(CN=SEV-Milan\) keyUsage lacks keyCertSign/],
    ['ASK without basicConstraints', { inter: { usage: KeyUsageFlags.keyCertSign } }, 'ASK', /ASK certificate \(CN=SEV-Milan\) has no basicConstraints extension/],
    ['ASK with CA:FALSE', { inter: { ca: false, usage: KeyUsageFlags.keyCertSign } }, 'ASK', /ASK certificate \(CN=SEV-Milan\) has basicConstraints CA:FALSE/],
    ['ASK with neither extension', { inter: {} }, 'ASK', /ASK certificate \(CN=SEV-Milan\) has no basicConstraints extension/],
  ];
  for (const [name, roles, , message] of cases) {
    it(`${name} → sev.cert_usage_invalid`, () => {
      const e = errorOf(() => verifyRebuilt(rebuild(milan, roles)));
      expect(e.code).toBe('sev.cert_usage_invalid');
      expect(e.message).toMatch(message);
      expect(e.status).toBe(403);
    });
  }
  it('an ASVK without keyUsage is refused for a VLEK chain and named as the ASVK', () => {
    const e = errorOf(() => verifyRebuilt(rebuild(milanVlek, { inter: { ca: true } })));
    expect(e.code).toBe('sev.cert_usage_invalid');
    expect(e.message).toMatch(/ASVK certificate \(CN=SEV-VLEK-Milan\) has no keyUsage extension/);
  });
  it('a good ASK is still found when a same-named ASK without keyUsage comes first', () => {
    const good = rebuild(milan);
    const bad = rebuild(milan, { inter: { ca: true } });
    expect(bad.ark.equals(good.ark)).toBe(false); // PSS signatures are randomised; same key and names
    const report = makeSnpReport({ chain: milan });
    const pins = { milan: good.pins.milan! };
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: good.leaf, chain: [bad.intermediate, good.intermediate, good.ark] }, { now: NOW, arkSha256: pins }))).toBe('no error');
    expect(codeOf(() => verifySnpEvidence({ report, endorsementCert: good.leaf, chain: [bad.intermediate, good.ark] }, { now: NOW, arkSha256: pins }))).toBe('sev.cert_usage_invalid');
  });
});

describe('the VCEK/VLEK must be an end-entity certificate', () => {
  const cases: [string, SnpTestChain, Roles, RegExp][] = [
    ['VCEK with CA:TRUE', milan, { ca: true }, /VCEK certificate \(CN=SEV-VCEK\) has basicConstraints CA:TRUE/],
    ['VCEK with CA:TRUE and keyCertSign', milan, { ca: true, usage: KeyUsageFlags.keyCertSign }, /VCEK certificate \(CN=SEV-VCEK\) has basicConstraints CA:TRUE/],
    ['VCEK with keyCertSign only', milan, { usage: KeyUsageFlags.keyCertSign | KeyUsageFlags.digitalSignature }, /VCEK certificate \(CN=SEV-VCEK\) keyUsage includes keyCertSign/],
    ['Turin VCEK with CA:TRUE', turin, { ca: true }, /VCEK certificate \(CN=SEV-VCEK\) has basicConstraints CA:TRUE/],
    ['VLEK with CA:TRUE', milanVlek, { ca: true }, /VLEK certificate \(CN=SEV-VLEK\) has basicConstraints CA:TRUE/],
    ['VLEK with keyCertSign', milanVlek, { usage: KeyUsageFlags.keyCertSign }, /VLEK certificate \(CN=SEV-VLEK\) keyUsage includes keyCertSign/],
  ];
  for (const [name, base, roles, message] of cases) {
    it(`${name} → sev.cert_usage_invalid`, () => {
      const r = rebuild(base, { leaf: roles });
      const e = errorOf(() => verifyRebuilt(r));
      expect(e.code).toBe('sev.cert_usage_invalid');
      expect(e.message).toMatch(message);
      // The chain check alone refuses it too (no report needed).
      expect(codeOf(() => verifyEndorsementChain(r.leaf, [r.intermediate, r.ark], { now: NOW, pins: { milan: '0'.repeat(64), genoa: '0'.repeat(64), turin: '0'.repeat(64), ...r.pins } }))).toBe(
        'sev.cert_usage_invalid',
      );
    });
  }
});

describe('verifyIssuerChain: an ASK/ASVK+ARK chain checked on its own (whether a fetched chain may be cached)', () => {
  const check = (ders: Buffer[], pins: Record<string, string>, o: { kind?: 'vcek' | 'vlek'; now?: Date; product?: 'milan' | 'turin' } = {}) =>
    codeOf(() => verifyIssuerChain(ders, o.product ?? 'milan', o.kind ?? 'vcek', { now: o.now ?? NOW, pins: resolveArkPins(pins) }));
  it('a rebuilt AMD-like chain passes in either order, for ASK and ASVK', () => {
    const r = rebuild(milan);
    expect(check([r.intermediate, r.ark], r.pins)).toBe('no error');
    expect(check([r.ark, r.intermediate], r.pins)).toBe('no error');
    const v = rebuild(milanVlek);
    expect(check([v.intermediate, v.ark], v.pins, { kind: 'vlek' })).toBe('no error');
  });
  it('refuses a missing or unpinned ARK, a wrong count, an intermediate of the other kind or not signed by the ARK', () => {
    const r = rebuild(milan);
    expect(check([r.intermediate, r.ark], { milan: '0'.repeat(64) })).toBe('sev.ark_untrusted');
    expect(check([r.ark], r.pins)).toBe('sev.chain_incomplete');
    expect(check([r.ark, r.ark], r.pins)).toBe('sev.chain_incomplete');
    expect(check([r.intermediate, r.ark, r.intermediate], r.pins)).toBe('sev.chain_incomplete');
    expect(check([r.intermediate, r.ark], r.pins, { kind: 'vlek' })).toBe('sev.chain_kind_mismatch');
    // The ASK of the synthetic chain is signed by its own (other) ARK key.
    expect(check([milan.intermediate, r.ark], r.pins)).toBe('sev.cert_signature_invalid');
    // Pinned as Milan, asked for as Turin.
    expect(check([r.intermediate, r.ark], r.pins, { product: 'turin' })).toBe('sev.ark_untrusted');
  });
  it('refuses an ARK or ASK without its CA role', () => {
    for (const roles of [{ ark: { ca: true } }, { ark: { usage: KeyUsageFlags.keyCertSign } }, { inter: { ca: true } }, { inter: { ca: false, usage: KeyUsageFlags.keyCertSign } }, { inter: {} }]) {
      const r = rebuild(milan, roles);
      expect(check([r.intermediate, r.ark], r.pins), JSON.stringify(roles)).toBe('sev.cert_usage_invalid');
    }
  });
  it('refuses a chain not valid at the given time', () => {
    const r = rebuild(milan);
    expect(check([r.intermediate, r.ark], r.pins, { now: new Date('2041-01-01T00:00:00Z') })).toBe('sev.cert_expired');
    expect(check([r.intermediate, r.ark], r.pins, { now: new Date('2019-01-01T00:00:00Z') })).toBe('sev.cert_not_yet_valid');
  });
});

const have = requireTestdata();

describe.skipIf(!have)('real AMD certificates satisfy the role rules', () => {
  it('every real ARK, ASK and ASVK is CA:TRUE with keyCertSign; every real VCEK has neither', () => {
    for (const [product, kind] of [
      ['milan', 'ask'],
      ['genoa', 'ask'],
      ['turin', 'ask'],
      ['milan', 'asvk'],
    ] as const) {
      const [inter, ark] = sevChain(product, kind).map((d) => parseSevCert(d, 'chain certificate'));
      for (const c of [inter!, ark!]) {
        expect(c.hasBasicConstraints, `${product} ${c.subjectCN}`).toBe(true);
        expect(c.isCA, `${product} ${c.subjectCN}`).toBe(true);
        expect(c.keyCertSign, `${product} ${c.subjectCN}`).toBe(true);
      }
    }
    for (const f of ['milan-v2.vcek.der', 'milan-v2-debug.vcek.der', 'turin-v5.vcek.der']) {
      const c = parseSevCert(sevFile(f), 'VCEK');
      expect(c.hasBasicConstraints, f).toBe(false);
      expect(c.isCA, f).toBe(false);
      expect(c.keyCertSign, f).toBeUndefined();
    }
  });
  it('the real AMD cert_chain files pass verifyIssuerChain with the built-in pins', () => {
    expect(codeOf(() => verifyIssuerChain(sevChain('milan'), 'milan', 'vcek', { now: MILAN_AT, pins: resolveArkPins() }))).toBe('no error');
    expect(codeOf(() => verifyIssuerChain(sevChain('turin'), 'turin', 'vcek', { now: TURIN_AT, pins: resolveArkPins() }))).toBe('no error');
    expect(codeOf(() => verifyIssuerChain(sevChain('milan', 'asvk'), 'milan', 'vlek', { now: MILAN_AT, pins: resolveArkPins() }))).toBe('no error');
    expect(codeOf(() => verifyIssuerChain(sevChain('milan'), 'genoa', 'vcek', { now: MILAN_AT, pins: resolveArkPins() }))).toBe('sev.ark_untrusted');
  });
  it('the real reports still verify', () => {
    expect(codeOf(() => verifySnpEvidence({ report: sevFile('milan-v2.report.hex'), endorsementCert: sevFile('milan-v2.vcek.der'), chain: sevChain('milan') }, { now: MILAN_AT }))).toBe('no error');
    expect(codeOf(() => verifySnpEvidence({ report: sevFile('turin-v5.report.bin'), endorsementCert: sevFile('turin-v5.vcek.der'), chain: sevChain('turin') }, { now: TURIN_AT }))).toBe('no error');
  });
});
