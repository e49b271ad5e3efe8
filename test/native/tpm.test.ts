/**
 * sigil_tpm against a manufactured swtpm, cross-checked with tpm2-tools. swtpm serves one TCP
 * client at a time, so tpm2-tools commands that talk to the TPM run only while our device is
 * closed; tpm2_checkquote and tpm2_makecredential (-T none) work offline.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, createPublicKey, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import 'reflect-metadata';
import { X509Certificate } from '@peculiar/x509';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { bankName, openTpm, tpmAvailable, transientHandles, trimDer, type TpmDevice } from '../../src/native/tpm.js';
import { startSwtpm, type SwtpmHandle } from '../support/swtpm.js';

const haveTools = spawnSync('sh', ['-c', 'command -v tpm2_checkquote && command -v tpm2_makecredential && command -v tpm2_pcrread']).status === 0;

function tool(h: SwtpmHandle | null, cmd: string, args: string[]): string {
  const env = { ...process.env };
  if (h) env.TPM2TOOLS_TCTI = h.tcti;
  return execFileSync(cmd, args, { env, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 20_000 });
}

/** Minimal TPM2B_PUBLIC reader for the test's own cross-checks (src/tpm/ has the real parser). */
function publicKeyOf(tpm2bPublic: Buffer): { type: 'rsa'; n: Buffer } | { type: 'ecc'; curve: number; x: Buffer; y: Buffer } {
  let o = 0;
  const u16 = (): number => {
    const v = tpm2bPublic.readUInt16BE(o);
    o += 2;
    return v;
  };
  const b2 = (): Buffer => {
    const n = u16();
    const v = tpm2bPublic.subarray(o, o + n);
    o += n;
    return v;
  };
  expect(u16()).toBe(tpm2bPublic.length - 2);
  const type = u16();
  u16(); // nameAlg
  o += 4; // objectAttributes
  b2(); // authPolicy
  if (u16() !== 0x0010) o += 4; // symmetric keyBits + mode
  if (u16() !== 0x0010) o += 2; // scheme hash
  if (type === 0x0001) {
    o += 2 + 4; // keyBits, exponent
    return { type: 'rsa', n: b2() };
  }
  const curve = u16();
  if (u16() !== 0x0010) o += 2; // kdf
  const x = b2();
  const y = b2();
  return { type: 'ecc', curve, x, y };
}

function certKey(der: Buffer): { n?: Buffer; x?: Buffer; y?: Buffer } {
  const cert = new X509Certificate(der);
  const jwk = createPublicKey({ key: Buffer.from(cert.publicKey.rawData), format: 'der', type: 'spki' }).export({ format: 'jwk' });
  const dec = (s: string | undefined): Buffer | undefined => (s === undefined ? undefined : Buffer.from(s, 'base64url'));
  return { n: dec(jwk.n), x: dec(jwk.x), y: dec(jwk.y) };
}

function expectKeyMatchesCert(tpm2bPublic: Buffer, der: Buffer): void {
  const k = publicKeyOf(tpm2bPublic);
  const c = certKey(der);
  if (k.type === 'rsa') {
    expect(c.n?.equals(k.n)).toBe(true);
  } else {
    expect(c.x?.equals(k.x)).toBe(true);
    expect(c.y?.equals(k.y)).toBe(true);
  }
}

/** TPML_PCR_SELECTION for the given banks (TPM_ALG_ID → PCR indices), 3-byte bitmaps. */
function pcrSelection(banks: [number, number[]][]): Buffer {
  const parts = [Buffer.from([0, 0, 0, banks.length])];
  for (const [alg, idx] of banks) {
    const bm = Buffer.alloc(3);
    for (const i of idx) bm[i >> 3] = (bm[i >> 3] as number) | (1 << (i & 7));
    const head = Buffer.alloc(3);
    head.writeUInt16BE(alg, 0);
    head[2] = 3;
    parts.push(head, bm);
  }
  return Buffer.concat(parts);
}

/** Reads tpm2-tools' makecredential output: 0xBADCC0DE, version 1, TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET. */
function readCredFile(path: string): { blob: Buffer; secret: Buffer } {
  const f = readFileSync(path);
  expect(f.readUInt32BE(0)).toBe(0xbadcc0de);
  let o = 8;
  const blobLen = f.readUInt16BE(o);
  const blob = f.subarray(o, o + 2 + blobLen);
  o += 2 + blobLen;
  const secLen = f.readUInt16BE(o);
  const secret = f.subarray(o, o + 2 + secLen);
  expect(o + 2 + secLen).toBe(f.length);
  return { blob, secret };
}

async function expectCode(p: Promise<unknown>, code: string, msg?: RegExp): Promise<SigilError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(SigilError);
  expect((err as SigilError).code).toBe(code);
  if (msg) expect((err as SigilError).message).toMatch(msg);
  return err as SigilError;
}

const SHA1 = 0x0004;
const SHA256 = 0x000b;

describe('tpm.ts helpers', () => {
  it('trimDer cuts NV padding after a DER SEQUENCE and leaves anything else alone', () => {
    const short = Buffer.from([0x30, 0x03, 1, 2, 3]);
    expect(trimDer(Buffer.concat([short, Buffer.alloc(10, 0xff)]))).toEqual(short);
    const long = Buffer.concat([Buffer.from([0x30, 0x82, 0x01, 0x00]), Buffer.alloc(256, 7)]);
    expect(trimDer(Buffer.concat([long, Buffer.alloc(100)]))).toEqual(long);
    const truncated = long.subarray(0, 200);
    expect(trimDer(truncated)).toBe(truncated);
    const notDer = Buffer.from([0x04, 0x01, 0]);
    expect(trimDer(notDer)).toBe(notDer);
    const badLen = Buffer.from([0x30, 0x80, 0, 0]);
    expect(trimDer(badLen)).toBe(badLen);
  });

  it('bankName maps hash algorithm ids', () => {
    expect([0x0004, 0x000b, 0x000c, 0x000d].map(bankName)).toEqual(['sha1', 'sha256', 'sha384', 'sha512']);
    expect(bankName(0x0012)).toBe('alg-0x0012');
  });
});

describe('sigil_tpm on swtpm', () => {
  let h: SwtpmHandle | null = null;
  let dir: string;

  beforeAll(async () => {
    h = await startSwtpm();
    dir = mkdtempSync(join(tmpdir(), 'sigil-tpmtest-'));
    if (h && !haveTools) {
      if (process.env.CI === 'true') throw new Error('tpm2-tools not installed; CI must not skip the TPM cross-checks');
      console.warn('[skip] tpm2-tools not installed (apt-get install tpm2-tools); TPM cross-checks skipped');
    }
  });
  afterAll(async () => {
    await h?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  const ready = (): SwtpmHandle | null => {
    if (!h) return null;
    expect(tpmAvailable()).toEqual({ ok: true });
    return h;
  };

  it('reads the EK certificates and they certify the EKs the native addon returns', async () => {
    const sw = ready();
    if (!sw || !haveTools) return;
    const dev = await openTpm(sw.tcti);
    let rsaPub: Buffer;
    let p384Pub: Buffer;
    let cert: { nvIndex: number; der: Buffer } | null;
    try {
      cert = await dev.readEkCertificate();
      rsaPub = await dev.getEkPublic('rsa');
      p384Pub = await dev.getEkPublic('ecc-p384');
    } finally {
      await dev.close();
    }
    expect(cert).not.toBeNull();
    expect(cert?.nvIndex).toBe(0x01c00002);
    const der = cert?.der as Buffer;
    expect(() => new X509Certificate(der)).not.toThrow();
    expectKeyMatchesCert(rsaPub, der);
    expect(publicKeyOf(p384Pub)).toMatchObject({ type: 'ecc', curve: 0x0004 });

    // The P-384 certificate lives at the high-range index; read it with tpm2-tools.
    const out = join(dir, 'ek384.der');
    tool(sw, 'tpm2_nvread', ['0x01c00016', '-o', out]);
    expectKeyMatchesCert(p384Pub, readFileSync(out));
  });

  it('creates an AK, and loading its saved blobs after reopening gives the same Name', async () => {
    const sw = ready();
    if (!sw) return;
    const dev = await openTpm(sw.tcti);
    let name1: Buffer;
    try {
      const ak = await dev.createAk('rsa');
      writeFileSync(join(dir, 'ak.pub'), ak.public);
      writeFileSync(join(dir, 'ak.priv'), ak.private);
      name1 = (await dev.loadAk(ak)).name;
    } finally {
      await dev.close();
    }
    const pub = readFileSync(join(dir, 'ak.pub'));
    expect(name1.equals(Buffer.concat([Buffer.from([0x00, 0x0b]), createHash('sha256').update(pub.subarray(2)).digest()]))).toBe(true);

    const dev2 = await openTpm(sw.tcti);
    try {
      const { name } = await dev2.loadAk({ public: pub, private: readFileSync(join(dir, 'ak.priv')) });
      expect(name.equals(name1)).toBe(true);
    } finally {
      await dev2.close();
    }
  });

  it('quotes with RSA and ECC AKs; tpm2_checkquote accepts the quote and rejects a wrong nonce', async () => {
    const sw = ready();
    if (!sw || !haveTools) return;
    const sel = pcrSelection([
      [SHA256, [0, 1, 2, 3, 7]],
      [SHA1, [0]],
    ]);
    const dev = await openTpm(sw.tcti);
    try {
      for (const alg of ['rsa', 'ecc'] as const) {
        const ak = await dev.createAk(alg);
        await dev.loadAk(ak);
        const nonce = randomBytes(32);
        const { attest, signature } = await dev.quote(sel, nonce);
        expect(attest.readUInt16BE(0)).toBe(attest.length - 2);
        const pcrs = await dev.pcrRead(sel);
        // TPMS_ATTEST ends with the pcrDigest: SHA-256 over the quoted PCR values in selection order.
        const digest = createHash('sha256')
          .update(Buffer.concat(pcrs.map((p) => p.value)))
          .digest();
        expect(attest.subarray(attest.length - 34).equals(Buffer.concat([Buffer.from([0, 32]), digest]))).toBe(true);

        const f = (n: string): string => join(dir, `${alg}-${n}`);
        writeFileSync(f('ak.pub'), ak.public);
        writeFileSync(f('attest'), attest.subarray(2));
        writeFileSync(f('sig'), signature);
        const args = ['-u', f('ak.pub'), '-m', f('attest'), '-s', f('sig'), '-g', 'sha256'];
        expect(() => tool(null, 'tpm2_checkquote', [...args, '-q', nonce.toString('hex')])).not.toThrow();
        const wrong = Buffer.from(nonce);
        wrong[0] = (wrong[0] as number) ^ 1;
        expect(() => tool(null, 'tpm2_checkquote', [...args, '-q', wrong.toString('hex')])).toThrow();
      }
    } finally {
      await dev.close();
    }
  });

  it('activateCredential recovers a tpm2_makecredential secret with the RSA (low range) and P-384 (high range) EKs', async () => {
    const sw = ready();
    if (!sw || !haveTools) return;
    const dev = await openTpm(sw.tcti);
    try {
      for (const ekAlg of ['rsa', 'ecc-p384'] as const) {
        const ekPub = await dev.getEkPublic(ekAlg);
        const ak = await dev.createAk('ecc');
        const { name } = await dev.loadAk(ak);
        const secret = randomBytes(32);
        const f = (n: string): string => join(dir, `${ekAlg}-${n}`);
        writeFileSync(f('ek.pub'), ekPub);
        writeFileSync(f('secret'), secret);
        tool(null, 'tpm2_makecredential', ['-T', 'none', '-e', f('ek.pub'), '-s', f('secret'), '-n', name.toString('hex'), '-o', f('cred')]);
        const { blob, secret: encSecret } = readCredFile(f('cred'));
        const got = await dev.activateCredential(blob, encSecret);
        expect(got.equals(secret)).toBe(true);

        // A credential for another key name must not open, and the error is decoded.
        tool(null, 'tpm2_makecredential', ['-T', 'none', '-e', f('ek.pub'), '-s', f('secret'), '-n', `000b${'11'.repeat(32)}`, '-o', f('cred2')]);
        const other = readCredFile(f('cred2'));
        await expectCode(dev.activateCredential(other.blob, other.secret), 'tpm.device_error', /Esys_ActivateCredential failed: 0x000001df \(tpm:parameter\(1\):integrity check failed\)/);
      }
      // Still usable after the failures (sessions were flushed).
      expect((await transientHandles(dev)).length).toBeLessThanOrEqual(2);
    } finally {
      await dev.close();
    }
  });

  it('pcrRead returns every selected PCR (more than one TPM round) equal to tpm2_pcrread', async () => {
    const sw = ready();
    if (!sw || !haveTools) return;
    tool(sw, 'tpm2_pcrextend', [`16:sha1=${'ab'.repeat(20)},sha256=${'cd'.repeat(32)}`]);
    const all = Array.from({ length: 24 }, (_, i) => i);
    const sel = pcrSelection([
      [SHA1, all],
      [SHA256, all],
    ]);
    const dev = await openTpm(sw.tcti);
    let values: { bank: string; index: number; value: Buffer }[];
    try {
      values = await dev.pcrRead(sel);
    } finally {
      await dev.close();
    }
    expect(values.length).toBe(48);
    expect(values.slice(0, 24).every((v, i) => v.bank === 'sha1' && v.index === i && v.value.length === 20)).toBe(true);
    expect(values.slice(24).every((v, i) => v.bank === 'sha256' && v.index === i && v.value.length === 32)).toBe(true);
    expect(values[16]?.value.equals(Buffer.alloc(20))).toBe(false);
    const out = join(dir, 'pcrs.bin');
    tool(sw, 'tpm2_pcrread', ['sha1:all+sha256:all', '-o', out]);
    expect(Buffer.concat(values.map((v) => v.value)).equals(readFileSync(out))).toBe(true);
  });

  it('rejects malformed inputs without touching the TPM state', async () => {
    const sw = ready();
    if (!sw) return;
    const dev = await openTpm(sw.tcti);
    try {
      await expectCode(dev.loadAk({ public: Buffer.from([0, 5, 1, 2]), private: Buffer.alloc(2) }), 'tpm.invalid_argument', /TPM2B_PUBLIC/);
      const sel = pcrSelection([[SHA256, [0]]]);
      await expectCode(dev.pcrRead(Buffer.concat([sel, Buffer.from([0])])), 'tpm.invalid_argument', /trailing/);
      await expectCode(dev.quote(sel, Buffer.alloc(8)), 'tpm.device_error', /no AK is loaded/);
      await expectCode(dev.activateCredential(Buffer.from([0, 1, 0]), Buffer.alloc(2)), 'tpm.device_error', /no AK is loaded/);
      const ak = await dev.createAk('ecc');
      await dev.loadAk(ak);
      await expectCode(dev.quote(sel, Buffer.alloc(65)), 'tpm.device_error', /at most 64/);
      await expectCode(dev.pcrRead(pcrSelection([[0x0012, [0]]])), 'tpm.device_error');
      await expectCode(dev.getEkPublic('dsa' as 'rsa'), 'tpm.invalid_argument');
    } finally {
      await dev.close();
    }
    await expectCode(dev.quote(pcrSelection([[SHA256, [0]]]), Buffer.alloc(0)), 'tpm.closed');
  });

  it('a bad TCTI gives a decoded error, not a crash', async () => {
    if (!ready()) return;
    await expectCode(openTpm('swtpm:host=127.0.0.1,port=1'), 'tpm.device_error', /Tss2_TctiLdr_Initialize.*0x000a000a \(tcti:IO failure\)/);
    await expectCode(openTpm('no-such-tcti:whatever'), 'tpm.device_error', /Tss2_TctiLdr_Initialize.*\(tcti:/);
    await expectCode(openTpm(''), 'tpm.invalid_argument');
  });

  it('200 sequential quotes and a burst of concurrent calls leak no handles', async () => {
    const sw = ready();
    if (!sw || !haveTools) return;
    const sel = pcrSelection([[SHA256, [0, 1, 2, 3, 4, 5, 6, 7]]]);
    const dev: TpmDevice = await openTpm(sw.tcti);
    try {
      await dev.getEkPublic('ecc-p256'); // no persistent P-256 EK: a transient one is created
      await dev.loadAk(await dev.createAk('ecc'));
      const before = await transientHandles(dev);
      expect(before.length).toBe(2); // EK + AK
      for (let i = 0; i < 200; i++) {
        const q = await dev.quote(sel, Buffer.from([i & 0xff]));
        expect(q.signature.length).toBeGreaterThan(0);
      }
      expect(await transientHandles(dev)).toEqual(before);
      // Concurrent calls are serialised in call order.
      const results = await Promise.all(Array.from({ length: 20 }, (_, i) => (i % 2 === 0 ? dev.quote(sel, Buffer.from([i])) : dev.pcrRead(sel))));
      expect(results.length).toBe(20);
      expect(await transientHandles(dev)).toEqual(before);
    } finally {
      await dev.close();
    }
    expect(tool(sw, 'tpm2_getcap', ['handles-transient']).trim()).toBe('');
    expect(tool(sw, 'tpm2_getcap', ['handles-loaded-session']).trim()).toBe('');
    expect(tool(sw, 'tpm2_getcap', ['handles-saved-session']).trim()).toBe('');
  });
});

describe('sigil_tpm without persistent EKs (EK re-created from the TCG templates)', () => {
  it('CreatePrimary gives the certified EKs, and an AK made under the persistent EK loads under the re-created one', async () => {
    const sw = await startSwtpm();
    if (!sw || !haveTools) {
      await sw?.stop();
      return;
    }
    try {
      const dev = await openTpm(sw.tcti);
      let ak: { public: Buffer; private: Buffer };
      let name: Buffer;
      try {
        await dev.getEkPublic('rsa'); // the persistent 0x81010001
        ak = await dev.createAk('rsa');
        name = (await dev.loadAk(ak)).name;
      } finally {
        await dev.close();
      }
      const d = mkdtempSync(join(tmpdir(), 'sigil-tpmek-'));
      try {
        tool(sw, 'tpm2_nvread', ['0x01c00002', '-o', join(d, 'rsa.der')]);
        tool(sw, 'tpm2_nvread', ['0x01c00016', '-o', join(d, 'p384.der')]);
        tool(sw, 'tpm2_evictcontrol', ['-C', 'o', '-c', '0x81010001']);
        tool(sw, 'tpm2_evictcontrol', ['-C', 'o', '-c', '0x81010016']);
        expect(tool(sw, 'tpm2_getcap', ['handles-persistent']).trim()).toBe('');

        const dev2 = await openTpm(sw.tcti);
        try {
          const rsa = await dev2.getEkPublic('rsa');
          expectKeyMatchesCert(rsa, readFileSync(join(d, 'rsa.der')));
          const again = await dev2.loadAk(ak);
          expect(again.name.equals(name)).toBe(true);
          const p384 = await dev2.getEkPublic('ecc-p384');
          expectKeyMatchesCert(p384, readFileSync(join(d, 'p384.der')));
          // Switching EKs flushed the transient RSA EK: the P-384 EK and the AK remain.
          expect((await transientHandles(dev2)).length).toBe(2);
        } finally {
          await dev2.close();
        }
        expect(tool(sw, 'tpm2_getcap', ['handles-transient']).trim()).toBe('');
      } finally {
        rmSync(d, { recursive: true, force: true });
      }
    } finally {
      await sw.stop();
    }
  });
});
