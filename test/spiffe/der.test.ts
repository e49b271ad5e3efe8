import { describe, expect, it } from 'vitest';
import { checkStrictDer, decodeOid, decodeTime, encodeTime, encodeUnsignedInteger, readSingle, readTlv, tlv } from '../../src/spiffe/der.js';
import { encodeKeyUsageValue, parseKeyUsageValue, KU, parseBasicConstraintsValue, encodeBasicConstraintsValue } from '../../src/spiffe/x509ext.js';
import { codeOf } from '../support/codes.js';

const h = (s: string): Buffer => Buffer.from(s.replace(/\s/g, ''), 'hex');


describe('strict DER reader', () => {
  it('accepts canonical encodings', () => {
    for (const ok of ['3000', '3003020100', '300602017f020180', '0101ff', '010100', '0500', '030100', '03020780', '3106020101020102', '06032a0304']) {
      expect(() => checkStrictDer(h(ok), 't')).not.toThrow();
    }
    const long = tlv(0x04, Buffer.alloc(300));
    expect(long.subarray(0, 4)).toEqual(h('04 82 01 2c'));
    expect(() => checkStrictDer(long, 't')).not.toThrow();
  });

  it.each([
    ['trailing byte', '300000'],
    ['truncated', '3003020101 '.slice(0, 8)],
    ['indefinite length', '30800000'],
    ['non-minimal long form', '3081020500'],
    ['long form with leading zero', '308200020500'],
    ['child overruns parent', '3002020500'],
    ['non-minimal INTEGER 00', '3004020200 7f'],
    ['non-minimal INTEGER ff', '30040202ff80'],
    ['empty INTEGER', '30020200'],
    ['BOOLEAN not 00/ff', '3003010101'],
    ['NULL with content', '3003050100'],
    ['BIT STRING bad unused', '3003030108'],
    ['BIT STRING nonzero padding', '300403020781'],
    ['unsorted SET', '3106020102020101'],
    ['OID non-minimal arc', '300406028001'],
    ['OID truncated', '30030601 81'],
    ['high tag number', '1f0100'],
    ['empty input', ''],
  ])('rejects %s', (_name, hex) => {
    expect(codeOf(() => checkStrictDer(h(hex), 'test.malformed'))).toBe('test.malformed');
  });

  it('readTlv never reads past its limit', () => {
    const b = h('300a0408 0000000000000000');
    expect(codeOf(() => readTlv(b, 0, 4, 'x'))).toBe('x');
    expect(readSingle(b, 'x').end).toBe(12);
  });

  it('decodes OIDs', () => {
    expect(decodeOid(h('06082a8648ce3d030107'), readSingle(h('06082a8648ce3d030107'), 'x'), 'x')).toBe('1.2.840.10045.3.1.7');
    expect(decodeOid(h('0603551d11'), readSingle(h('0603551d11'), 'x'), 'x')).toBe('2.5.29.17');
    expect(decodeOid(h('06028837'), readSingle(h('06028837'), 'x'), 'x')).toBe('2.999');
  });
});

describe('time and integer encoding', () => {
  it.each([
    ['2030-06-01T12:34:56Z', '170d3330303630313132333435365a'],
    ['1950-01-01T00:00:00Z', '170d3530303130313030303030305a'],
    ['2049-12-31T23:59:59Z', '170d3439313233313233353935395a'],
    ['2050-01-01T00:00:00Z', '180f32303530303130313030303030305a'],
    ['9999-12-31T23:59:59Z', '180f39393939313233313233353935395a'],
  ])('%s', (iso, hex) => {
    const enc = encodeTime(new Date(iso));
    expect(enc.toString('hex')).toBe(hex);
    expect(decodeTime(enc, readSingle(enc, 'x'), 'x').toISOString()).toBe(new Date(iso).toISOString());
  });

  it('rejects malformed times', () => {
    for (const s of ['33303036303131323334355a', '333030363031313233343536', '3330313333313132333435365a', '3330303633313132333435365a', '333030363031313233343536305a']) {
      const t = tlv(0x17, h(s));
      expect(codeOf(() => decodeTime(t, readSingle(t, 'x'), 'bad'))).toBe('bad');
    }
  });

  it('encodes unsigned integers minimally', () => {
    expect(encodeUnsignedInteger(h('0080')).toString('hex')).toBe('02020080');
    expect(encodeUnsignedInteger(h('80')).toString('hex')).toBe('02020080');
    expect(encodeUnsignedInteger(h('00007f')).toString('hex')).toBe('02017f');
    expect(encodeUnsignedInteger(h('00')).toString('hex')).toBe('020100');
  });

  it('encodes and parses keyUsage and basicConstraints', () => {
    expect(encodeKeyUsageValue(KU.digitalSignature).toString('hex')).toBe('03020780');
    expect(encodeKeyUsageValue(KU.digitalSignature | KU.keyEncipherment).toString('hex')).toBe('030205a0');
    expect(encodeKeyUsageValue(KU.keyCertSign | KU.cRLSign).toString('hex')).toBe('03020106');
    expect(encodeKeyUsageValue(KU.decipherOnly).toString('hex')).toBe('0303070080');
    for (const f of [KU.digitalSignature, KU.keyCertSign | KU.cRLSign, KU.decipherOnly | KU.digitalSignature, 0x1ff]) {
      expect(parseKeyUsageValue(encodeKeyUsageValue(f), 'x')).toBe(f);
    }
    expect(parseBasicConstraintsValue(encodeBasicConstraintsValue(true, 3), 'x')).toEqual({ ca: true, pathLen: 3 });
    expect(parseBasicConstraintsValue(encodeBasicConstraintsValue(false), 'x')).toEqual({ ca: false, pathLen: undefined });
    expect(codeOf(() => parseBasicConstraintsValue(h('30030101 00'), 'bc'))).toBe('bc');
  });
});
