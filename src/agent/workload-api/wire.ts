/**
 * Strict decoder for the Workload API's request messages (protobuf wire format, proto3).
 *
 * Hand-written because protobufjs's reader is lenient about truncated length-delimited fields
 * (it returns short strings instead of failing) and does not validate UTF-8; requests come from
 * any local process, so they are decoded here with every length bounds-checked, strings checked
 * as UTF-8, group wire types refused and unknown fields skipped (proto3 rules). Responses are
 * encoded with protobufjs (./proto.ts) from values the server itself builds.
 */
import { GrpcError, GrpcStatus } from './grpc.js';

const utf8 = new TextDecoder('utf-8', { fatal: true });

function bad(why: string): never {
  throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `request message is not a valid protobuf encoding: ${why}`);
}

/** Varint as a number; values above 2^53 are refused (no field here needs them). */
function readVarint(buf: Uint8Array, pos: number): [number, number] {
  let value = 0;
  let mul = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= buf.length) bad('truncated varint');
    const b = buf[pos++]!;
    value += (b & 0x7f) * mul;
    if ((b & 0x80) === 0) {
      if (value > Number.MAX_SAFE_INTEGER) bad('varint out of range');
      return [value, pos];
    }
    mul *= 128;
  }
  bad('varint longer than 10 bytes');
}

export interface WireField {
  field: number;
  wire: number;
  /** Payload for wire type 2 (length-delimited). */
  bytes?: Uint8Array;
}

/**
 * Walk every field of a message. `onField` is called for each; it may throw to stop early.
 */
export function walkFields(buf: Uint8Array, onField: (f: WireField) => void): void {
  let pos = 0;
  while (pos < buf.length) {
    const [key, p1] = readVarint(buf, pos);
    pos = p1;
    const field = Math.floor(key / 8);
    const wire = key % 8;
    if (field === 0 || field > 0x1fffffff) bad(`invalid field number ${field}`);
    switch (wire) {
      case 0: {
        const [, p2] = readVarint(buf, pos);
        pos = p2;
        onField({ field, wire });
        break;
      }
      case 1:
        if (pos + 8 > buf.length) bad('truncated fixed64');
        pos += 8;
        onField({ field, wire });
        break;
      case 5:
        if (pos + 4 > buf.length) bad('truncated fixed32');
        pos += 4;
        onField({ field, wire });
        break;
      case 2: {
        const [len, p2] = readVarint(buf, pos);
        pos = p2;
        if (len > buf.length - pos) bad(`length ${len} of field ${field} runs past the end of the message`);
        onField({ field, wire, bytes: buf.subarray(pos, pos + len) });
        pos += len;
        break;
      }
      default:
        bad(`unsupported wire type ${wire} for field ${field}`);
    }
  }
}

function str(f: WireField, name: string): string {
  if (f.wire !== 2 || f.bytes === undefined) bad(`field ${name} has wire type ${f.wire}, expected length-delimited`);
  try {
    return utf8.decode(f.bytes);
  } catch {
    bad(`field ${name} is not valid UTF-8`);
  }
}

/** X509SVIDRequest, X509BundlesRequest, JWTBundlesRequest: no fields; unknown ones are skipped. */
export function decodeEmptyRequest(buf: Uint8Array): Record<string, never> {
  if (buf.length > 0) walkFields(buf, ignoreField);
  return {};
}

function ignoreField(): void {
  // unknown fields of an empty request are skipped (proto3)
}

export interface JwtSvidRequest {
  audience: string[];
  spiffeId: string;
}

/**
 * JWTSVIDRequest { repeated string audience = 1; string spiffe_id = 2; }. Stops with
 * InvalidArgument as soon as more than `maxAudiences` audiences are seen.
 */
export function decodeJwtSvidRequest(buf: Uint8Array, maxAudiences: number): JwtSvidRequest {
  const audience: string[] = [];
  let spiffeId = '';
  let count = 0;
  walkFields(buf, (f) => {
    if (f.field === 1) {
      count++;
      if (count > maxAudiences) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `too many audiences (more than ${maxAudiences})`);
      audience.push(str(f, 'audience'));
    } else if (f.field === 2) {
      spiffeId = str(f, 'spiffe_id');
    }
  });
  return { audience, spiffeId };
}

export interface ValidateJwtSvidRequest {
  audience: string;
  svid: string;
}

/** ValidateJWTSVIDRequest { string audience = 1; string svid = 2; } */
export function decodeValidateJwtSvidRequest(buf: Uint8Array): ValidateJwtSvidRequest {
  let audience = '';
  let svid = '';
  walkFields(buf, (f) => {
    if (f.field === 1) audience = str(f, 'audience');
    else if (f.field === 2) svid = str(f, 'svid');
  });
  return { audience, svid };
}
