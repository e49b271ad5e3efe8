/**
 * The binary IMA list (binary_runtime_measurements): the real keylime ASCII list re-encoded in
 * the kernel's binary layout from its fields must parse with every template hash recomputed from
 * the template data equal to the one in the real list (that proves the encoding); both forms of
 * every supported template give the same entries; every length is bounded and refused cleanly.
 */
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { algorithmByName } from '../../src/tpm/eventlog/algorithms.js';
import { IMA_MAX_TEMPLATE_DATA, detectImaFormat, parseImaAsciiLog, parseImaBinaryLog, parseImaLog, replayIma } from '../../src/tpm/ima/index.js';
import { codeOf } from '../support/codes.js';
import { requireTestdata, td } from '../support/testdata.js';
import { asciiList, binaryList, binaryRecord, specFromAsciiLine, syntheticSpecs, type ImaSpec } from './ima-builder.js';

const have = requireTestdata();
const SHA256 = algorithmByName('sha256')!;
const SHA1 = algorithmByName('sha1')!;

describe.skipIf(!have)('binary IMA list from the real keylime ASCII list', () => {
  const ascii = (): Buffer => readFileSync(td('tpm-eventlog', 'keylime_ima_log_sha256.txt'));
  const lines = (): string[] => ascii().toString('latin1').trimEnd().split('\n');

  it('template hashes recomputed from the binary template data equal the real ones', () => {
    const specs = lines().map(specFromAsciiLine);
    const bin = binaryList(specs);
    // Independently of the parser: each record's template data (after its length) hashes to the listed hash.
    let p = 0;
    for (const s of specs) {
      const nameLen = bin.readUInt32LE(p + 24);
      const dataLen = bin.readUInt32LE(p + 28 + nameLen);
      const data = bin.subarray(p + 32 + nameLen, p + 32 + nameLen + dataLen);
      expect(createHash('sha1').update(data).digest()).toEqual(s.templateHash);
      p += 32 + nameLen + dataLen;
    }
    expect(p).toBe(bin.length);
    const fromBin = parseImaBinaryLog(bin);
    const fromAscii = parseImaAsciiLog(ascii());
    expect(fromBin.map((e) => [e.path, e.digestAlg, e.digest.toString('hex'), e.templateHash.toString('hex'), e.templateData.toString('hex')])).toEqual(
      fromAscii.map((e) => [e.path, e.digestAlg, e.digest.toString('hex'), e.templateHash.toString('hex'), e.templateData.toString('hex')]),
    );
    expect(fromBin[0]!.path).toBe('boot_aggregate');
    for (const bank of [SHA1, SHA256]) expect(replayIma(fromBin, bank)).toEqual(replayIma(fromAscii, bank));
    expect(detectImaFormat(bin)).toBe('binary');
    expect(detectImaFormat(ascii())).toBe('ascii');
    expect(parseImaLog(bin).length).toBe(2);
  });
});

describe('binary and ASCII forms of every template', () => {
  const specs: ImaSpec[] = [
    { template: 'ima', path: '/sbin/init', digest: createHash('sha1').update('init').digest() },
    { template: 'ima-ng', path: '/usr/bin/bash', digest: createHash('sha256').update('bash').digest() },
    { template: 'ima-ng', alg: 'sha1', path: '/usr/bin/ls', digest: createHash('sha1').update('ls').digest() },
    { template: 'ima-sig', path: '/usr/bin/sudo', digest: createHash('sha256').update('sudo').digest(), extra: Buffer.from('030204aabbccdd00020102', 'hex') },
    { template: 'ima-sig', path: '/usr/bin/id', digest: createHash('sha512').update('id').digest(), alg: 'sha512' },
    { template: 'ima-buf', path: 'kexec-cmdline', digest: createHash('sha256').update('ro quiet').digest(), extra: Buffer.from('ro quiet') },
    { template: 'ima-ng', path: '/var/log/x', digest: createHash('sha256').update('x').digest(), violation: true },
  ];

  it('give the same entries, template data and replay in sha1 and sha256', () => {
    const a = parseImaAsciiLog(asciiList(specs));
    const b = parseImaBinaryLog(binaryList(specs));
    expect(b.map((e) => e.template)).toEqual(['ima', 'ima-ng', 'ima-ng', 'ima-sig', 'ima-sig', 'ima-buf', 'ima-ng']);
    expect(b.map((e) => [e.path, e.digestAlg, e.digest.toString('hex'), e.templateData.toString('hex'), e.violation])).toEqual(
      a.map((e) => [e.path, e.digestAlg, e.digest.toString('hex'), e.templateData.toString('hex'), e.violation]),
    );
    expect(b[6]!.violation).toBe(true);
    // The legacy template hashes its name zero-padded to 256 bytes.
    expect(b[0]!.templateData.length).toBe(20 + 256);
    for (const bank of [SHA1, SHA256]) expect(replayIma(b, bank)).toEqual(replayIma(a, bank));
    expect(b.map((e) => e.end)).toEqual(specs.map((_, i) => binaryList(specs.slice(0, i + 1)).length));
  });

  it('a binary list may name a file with spaces (the ASCII list cannot)', () => {
    const s: ImaSpec = { path: '/home/a b/c', digest: Buffer.alloc(32, 1) };
    expect(parseImaBinaryLog(binaryRecord(s))[0]!.path).toBe('/home/a b/c');
    expect(codeOf(() => parseImaAsciiLog(asciiList([s])))).toBe('tpm.ima_bad_entry');
  });
});

describe('bad binary lists', () => {
  const good = binaryList(syntheticSpecs(3));
  const rec = binaryRecord(syntheticSpecs(1)[0]!);
  const nameLenAt = 24;
  const dataLenAt = 28 + 6;

  it('every cut inside a record is truncated; a cut at a boundary is a shorter list; trailing bytes are refused', () => {
    const ends = parseImaBinaryLog(good).map((e) => e.end);
    for (let cut = 1; cut < good.length; cut++) {
      const sub = good.subarray(0, cut);
      if (ends.includes(cut)) expect(parseImaBinaryLog(sub).length).toBe(ends.indexOf(cut) + 1);
      else expect(codeOf(() => parseImaBinaryLog(sub))).toBe('tpm.ima_truncated');
    }
    expect(codeOf(() => parseImaBinaryLog(Buffer.concat([good, Buffer.from([10, 0])])))).toBe('tpm.ima_truncated');
  });

  it('lengths out of bounds, unknown templates, wrong hashes and PCRs are tpm.ima_bad_entry', () => {
    const edit = (f: (b: Buffer) => void): Buffer => {
      const b = Buffer.from(rec);
      f(b);
      return b;
    };
    expect(codeOf(() => parseImaBinaryLog(edit((b) => b.writeUInt32LE(0, nameLenAt))))).toBe('tpm.ima_bad_entry');
    expect(codeOf(() => parseImaBinaryLog(edit((b) => b.writeUInt32LE(16, nameLenAt))))).toBe('tpm.ima_bad_entry');
    expect(codeOf(() => parseImaBinaryLog(edit((b) => b.writeUInt32LE(IMA_MAX_TEMPLATE_DATA + 1, dataLenAt))))).toBe('tpm.ima_bad_entry');
    expect(codeOf(() => parseImaBinaryLog(edit((b) => b.write('imx-ng', 28, 'latin1'))))).toBe('tpm.ima_bad_entry');
    expect(codeOf(() => parseImaBinaryLog(edit((b) => (b[4] = b[4]! ^ 1))))).toBe('tpm.ima_bad_entry');
    expect(codeOf(() => parseImaBinaryLog(edit((b) => b.writeUInt32LE(24, 0))))).toBe('tpm.ima_bad_entry');
    // The first field's length runs past the template data.
    expect(codeOf(() => parseImaBinaryLog(edit((b) => b.writeUInt32LE(0xffff, dataLenAt + 4))))).toBe('tpm.ima_bad_entry');
    // Template data longer than its fields (a third field appended to ima-ng, lengths kept consistent).
    const s = syntheticSpecs(1)[0]!;
    const extra = binaryRecord({ ...s, template: 'ima-sig', extra: Buffer.from('ab', 'hex') });
    const asNg = Buffer.concat([extra.subarray(0, 24), Buffer.from([6, 0, 0, 0]), Buffer.from('ima-ng'), extra.subarray(28 + 7)]);
    expect(codeOf(() => parseImaBinaryLog(asNg))).toBe('tpm.ima_bad_entry');
    // A name without its NUL, a name with a control character.
    expect(codeOf(() => parseImaBinaryLog(binaryList([{ ...s, path: '/a\nb' }])))).toBe('tpm.ima_bad_entry');
    // An unknown digest algorithm and a digest of the wrong size.
    expect(codeOf(() => parseImaBinaryLog(binaryList([{ ...s, alg: 'sha999' }])))).toBe('tpm.ima_bad_entry');
    expect(codeOf(() => parseImaBinaryLog(binaryList([{ ...s, alg: 'sha1' }])))).toBe('tpm.ima_bad_entry');
  });

  it('size and count caps, empty input, and neither form', () => {
    expect(codeOf(() => parseImaBinaryLog(good, { maxEntries: 2 }))).toBe('tpm.ima_too_many_entries');
    expect(codeOf(() => parseImaBinaryLog(good, { maxBytes: good.length - 1 }))).toBe('tpm.ima_too_large');
    expect(codeOf(() => parseImaBinaryLog(Buffer.alloc(0)))).toBe('tpm.ima_empty');
    expect(codeOf(() => parseImaLog(Buffer.from('hello')))).toBe('tpm.ima_bad_entry');
    expect(codeOf(() => parseImaAsciiLog(asciiList(syntheticSpecs(3)), { maxEntries: 2 }))).toBe('tpm.ima_too_many_entries');
  });
});
