import { describe, expect, it } from 'vitest';
import { decodeEmptyRequest, decodeJwtSvidRequest, decodeValidateJwtSvidRequest } from '../../src/agent/workload-api/wire.js';
import { encodeMessage, workloadCodecs } from '../../src/agent/workload-api/proto.js';
import { GrpcError } from '../../src/agent/workload-api/grpc.js';

describe('strict request decoder', () => {
  const c = workloadCodecs();

  it('round-trips what protobufjs encodes (field numbers from the standard)', () => {
    const jwt = encodeMessage(c.JWTSVIDRequest, { audience: ['a', 'b', 'ü'], spiffe_id: 'spiffe://x/y' });
    expect(Buffer.from(jwt).toString('hex').startsWith('0a0161')).toBe(true); // field 1, wire type 2
    expect(decodeJwtSvidRequest(jwt, 64)).toEqual({ audience: ['a', 'b', 'ü'], spiffeId: 'spiffe://x/y' });
    const v = encodeMessage(c.ValidateJWTSVIDRequest, { audience: 'aud', svid: 'tok' });
    expect(Buffer.from(v).toString('hex')).toBe('0a036175641203746f6b');
    expect(decodeValidateJwtSvidRequest(v)).toEqual({ audience: 'aud', svid: 'tok' });
    expect(decodeEmptyRequest(new Uint8Array(0))).toEqual({});
  });

  it('skips unknown fields of every wire type, refuses groups and bad lengths', () => {
    const unknown = Buffer.from([0x18, 0x96, 0x01, 0x21, 1, 2, 3, 4, 5, 6, 7, 8, 0x2d, 1, 2, 3, 4, 0x32, 0x01, 0x00]);
    expect(decodeEmptyRequest(unknown)).toEqual({});
    const bad = (b: number[]): unknown => {
      try {
        decodeJwtSvidRequest(Buffer.from(b), 64);
        return 'decoded';
      } catch (e) {
        return e instanceof GrpcError ? e.code : e;
      }
    };
    expect(bad([0x0a, 0x05, 0x61])).toBe(3); // length past end
    expect(bad([0x0a])).toBe(3); // missing length
    expect(bad([0x0b])).toBe(3); // start group
    expect(bad([0x0c])).toBe(3); // end group
    expect(bad([0x08, 0x01])).toBe(3); // audience as varint
    expect(bad([0x00, 0x00])).toBe(3); // field 0
    expect(bad([0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01])).toBe(3); // 11-byte varint
    expect(bad([0x0a, 0x01, 0xff])).toBe(3); // invalid UTF-8
    expect(bad([0x21, 1, 2])).toBe(3); // truncated fixed64
  });

  it('stops at the audience limit without decoding the rest', () => {
    const many = Buffer.concat(Array.from({ length: 100 }, () => Buffer.from([0x0a, 0x01, 0x61])));
    expect(() => decodeJwtSvidRequest(many, 64)).toThrow(/too many audiences/);
    expect(decodeJwtSvidRequest(many, 100).audience).toHaveLength(100);
  });
});
