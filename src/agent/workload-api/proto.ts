/**
 * Response encoders for proto/workload.proto (the SPIFFE Workload API), built at run time with
 * protobufjs from the .proto file shipped in the package. Requests are decoded by the strict
 * decoder in ./wire.ts.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { SigilError } from '../../errors.js';

/** Finds proto/workload.proto by walking up from this module (works from src/ and dist/). */
export function workloadProtoPath(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const candidate = join(dir, 'proto', 'workload.proto');
    if (existsSync(candidate)) return candidate;
    const up = dirname(dir);
    if (up === dir) break;
    dir = up;
  }
  throw new SigilError('workload_api.proto_missing', 'proto/workload.proto not found next to the sigil package');
}

export const SERVICE_NAME = 'SpiffeWorkloadAPI';

export interface X509SvidMsg {
  spiffe_id: string;
  x509_svid: Uint8Array;
  x509_svid_key: Uint8Array;
  bundle: Uint8Array;
  hint: string;
}
export interface X509SvidResponseMsg {
  svids: X509SvidMsg[];
  crl: Uint8Array[];
  federated_bundles: Record<string, Uint8Array>;
}
export interface X509BundlesResponseMsg {
  crl: Uint8Array[];
  bundles: Record<string, Uint8Array>;
}
export interface JwtSvidMsg {
  spiffe_id: string;
  svid: string;
  hint: string;
}
export interface JwtSvidResponseMsg {
  svids: JwtSvidMsg[];
}
export interface JwtBundlesResponseMsg {
  bundles: Record<string, Uint8Array>;
}
export interface StructValue {
  nullValue?: 0;
  numberValue?: number;
  stringValue?: string;
  boolValue?: boolean;
  structValue?: { fields: Record<string, StructValue> };
  listValue?: { values: StructValue[] };
}
export interface ValidateJwtSvidResponseMsg {
  spiffe_id: string;
  claims: { fields: Record<string, StructValue> };
}

export interface WorkloadCodecs {
  root: protobuf.Root;
  X509SVIDRequest: protobuf.Type;
  X509SVIDResponse: protobuf.Type;
  X509BundlesRequest: protobuf.Type;
  X509BundlesResponse: protobuf.Type;
  JWTSVIDRequest: protobuf.Type;
  JWTSVIDResponse: protobuf.Type;
  JWTBundlesRequest: protobuf.Type;
  JWTBundlesResponse: protobuf.Type;
  ValidateJWTSVIDRequest: protobuf.Type;
  ValidateJWTSVIDResponse: protobuf.Type;
}

let codecs: WorkloadCodecs | undefined;

export function workloadCodecs(): WorkloadCodecs {
  if (codecs) return codecs;
  const root = new protobuf.Root();
  root.loadSync(workloadProtoPath(), { keepCase: true });
  root.resolveAll();
  const t = (n: string): protobuf.Type => root.lookupType(n);
  codecs = {
    root,
    X509SVIDRequest: t('X509SVIDRequest'),
    X509SVIDResponse: t('X509SVIDResponse'),
    X509BundlesRequest: t('X509BundlesRequest'),
    X509BundlesResponse: t('X509BundlesResponse'),
    JWTSVIDRequest: t('JWTSVIDRequest'),
    JWTSVIDResponse: t('JWTSVIDResponse'),
    JWTBundlesRequest: t('JWTBundlesRequest'),
    JWTBundlesResponse: t('JWTBundlesResponse'),
    ValidateJWTSVIDRequest: t('ValidateJWTSVIDRequest'),
    ValidateJWTSVIDResponse: t('ValidateJWTSVIDResponse'),
  };
  return codecs;
}

/** Encode a plain object (field names as in the .proto) with a message type. */
export function encodeMessage(type: protobuf.Type, value: object): Uint8Array {
  return type.encode(value as Record<string, unknown>).finish();
}

const MAX_STRUCT_DEPTH = 32;

/** JSON value → google.protobuf.Value (object form for protobufjs). */
export function toStructValue(v: unknown, depth = 0): StructValue {
  if (depth > MAX_STRUCT_DEPTH) throw new SigilError('workload_api.claims_too_deep', 'JWT claims are nested too deeply');
  if (v === null || v === undefined) return { nullValue: 0 };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (typeof v === 'bigint') return { numberValue: Number(v) };
  if (Array.isArray(v)) return { listValue: { values: v.map((x) => toStructValue(x, depth + 1)) } };
  if (typeof v === 'object') return { structValue: toStruct(v as Record<string, unknown>, depth + 1) };
  return { stringValue: String(v) };
}

export function toStruct(obj: Record<string, unknown>, depth = 0): { fields: Record<string, StructValue> } {
  const fields: Record<string, StructValue> = {};
  for (const [k, v] of Object.entries(obj)) fields[k] = toStructValue(v, depth);
  return { fields };
}
