/**
 * NSM request/response codec (src/nitro/nsm.ts) and the agent's default transport. The real
 * /dev/nsm ioctl only exists inside a Nitro enclave; here it must fail with a typed error.
 */
import { encode } from 'cbor2';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { SigilError } from '../../src/errors.js';
import { decodeAttestationRequest, decodeAttestationResponse, encodeAttestationRequest, NSM_RESPONSE_MAX_SIZE } from '../../src/nitro/nsm.js';
import { nitroAgentPlugin } from '../../src/nitro/plugin.js';

const h = (hex: string) => Buffer.from(hex.replace(/\s+/g, ''), 'hex');

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    expect(e).toBeInstanceOf(SigilError);
    return (e as SigilError).code;
  }
  return 'ok';
}

describe('NSM Attestation request', () => {
  it('encodes the serde externally-tagged map byte for byte', () => {
    const req = encodeAttestationRequest({ nonce: h('0102'), publicKey: h('aabbcc'), userData: null });
    // {"Attestation": {"user_data": null, "nonce": h'0102', "public_key": h'aabbcc'}}
    const want = h(`a1 6b 4174746573746174696f6e
      a3 69 757365725f64617461 f6
         65 6e6f6e6365 42 0102
         6a 7075626c69635f6b6579 43 aabbcc`);
    expect(req.toString('hex')).toBe(want.toString('hex'));
    expect(encodeAttestationRequest({ nonce: null, publicKey: null, userData: null }).toString('hex')).toBe(
      h('a1 6b 4174746573746174696f6e a3 69 757365725f64617461 f6 65 6e6f6e6365 f6 6a 7075626c69635f6b6579 f6').toString('hex'),
    );
  });

  it('round-trips and enforces NSM size limits', () => {
    const r = { nonce: Buffer.alloc(32, 7), publicKey: Buffer.alloc(91, 1), userData: Buffer.from('hi') };
    expect(decodeAttestationRequest(encodeAttestationRequest(r))).toEqual(r);
    expect(code(() => encodeAttestationRequest({ nonce: Buffer.alloc(513), publicKey: null, userData: null }))).toBe('nitro.nsm_request_invalid');
    expect(code(() => encodeAttestationRequest({ nonce: null, publicKey: Buffer.alloc(1025), userData: null }))).toBe('nitro.nsm_request_invalid');
    expect(code(() => encodeAttestationRequest({ nonce: null, publicKey: null, userData: Buffer.alloc(513) }))).toBe('nitro.nsm_request_invalid');
    expect(code(() => decodeAttestationRequest(h('a0')))).toBe('nitro.nsm_request_invalid');
    expect(code(() => decodeAttestationRequest(Buffer.from(encode(new Map([['Attestation', new Map([['x', null]])]])))))).toBe('nitro.nsm_request_invalid');
    expect(code(() => decodeAttestationRequest(h('ff')))).toBe('nitro.nsm_request_invalid');
  });
});

describe('NSM Attestation response', () => {
  const doc = new Uint8Array([0x84, 1, 2, 3]);
  const resp = (v: unknown) => Buffer.from(encode(v));

  it('returns the document', () => {
    const out = decodeAttestationResponse(resp(new Map([['Attestation', new Map([['document', doc]])]])));
    expect([...out]).toEqual([...doc]);
  });

  it('maps an NSM error', () => {
    let err: unknown;
    try {
      decodeAttestationResponse(resp(new Map([['Error', 'InputTooLarge']])));
    } catch (e) {
      err = e;
    }
    expect((err as SigilError).code).toBe('nitro.nsm_error');
    expect((err as SigilError).message).toMatch(/InputTooLarge/);
  });

  it('rejects everything else', () => {
    const bad: Buffer[] = [
      Buffer.alloc(0),
      Buffer.alloc(NSM_RESPONSE_MAX_SIZE + 1),
      h('ff'),
      h('a0'),
      resp(new Map<string, unknown>([['Attestation', new Map([['document', doc]])], ['Error', 'x']])),
      resp(new Map([['DescribeNSM', new Map()]])),
      resp(new Map([['Attestation', new Map([['document', 'text']])]])),
      resp(new Map([['Attestation', new Map([['document', new Uint8Array(0)]])]])),
      resp(new Map([['Attestation', new Map<string, unknown>([['document', doc], ['extra', 1]])]])),
      resp(new Map([['Attestation', doc]])),
      resp([1, 2]),
      Buffer.concat([resp(new Map([['Attestation', new Map([['document', doc]])]])), h('00')]),
      h('a2 6b4174746573746174696f6e a0 6b4174746573746174696f6e a0'),
    ];
    for (const b of bad) expect(code(() => decodeAttestationResponse(b)), b.subarray(0, 16).toString('hex')).toBe('nitro.nsm_bad_response');
  });
});

describe('default /dev/nsm transport', () => {
  it('fails with a typed error outside an enclave', async () => {
    const a = await nitroAgentPlugin.create({}, { trustDomain: 'example.org', logger: pino({ level: 'silent' }), dataDir: '/tmp', configDir: '/tmp', now: () => new Date() });
    let err: unknown;
    try {
      await a.respond({}, { nonce: Buffer.alloc(32), binding: Buffer.alloc(32), csrSpki: Buffer.alloc(91) });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SigilError);
    // addon wrapper missing, addon not built, or /dev/nsm absent — each is a typed error
    expect((err as SigilError).code).toMatch(/^(native|nitro)\.[a-z_]+$/);
  });
});
