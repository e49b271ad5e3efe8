/**
 * A SPIFFE Workload API client built on @grpc/grpc-js (a gRPC implementation Sigil did not
 * write), used by `sigil svid …` and `sigil healthcheck --socket`. It locates the endpoint as the
 * SPIFFE Workload Endpoint standard says (explicit configuration, else SPIFFE_ENDPOINT_SOCKET),
 * sends the `workload.spiffe.io: true` metadata on every call, and splits the concatenated DER
 * fields of the responses into certificates.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { isAbsolute } from 'node:path';
import { SigilError, errorMessage } from '../errors.js';
import { workloadProtoPath } from '../agent/workload-api/proto.js';

export const DEFAULT_WORKLOAD_SOCKET = '/run/sigil/agent.sock';
export const SECURITY_HEADER = 'workload.spiffe.io';

/**
 * Turn an endpoint address into a socket path. Accepts `unix:///abs/path` and `unix:/abs/path`
 * (RFC 3986 forms the Workload Endpoint standard allows: scheme unix, no authority, absolute
 * path) and a plain absolute path. Anything else (tcp://, relative paths, authority, query,
 * fragment) is refused with `workload_client.bad_endpoint`.
 */
export function socketPathFromEndpoint(value: string): string {
  const v = value.trim();
  if (v.length === 0) throw new SigilError('workload_client.bad_endpoint', 'Workload API endpoint is empty');
  let path: string;
  if (v.startsWith('unix://')) {
    const rest = v.slice('unix://'.length);
    if (!rest.startsWith('/')) throw new SigilError('workload_client.bad_endpoint', `endpoint "${v}" must not have an authority (use unix:///path)`);
    path = rest;
  } else if (v.startsWith('unix:')) {
    path = v.slice('unix:'.length);
  } else if (/^[a-zA-Z][a-zA-Z0-9+.-]*:/.test(v)) {
    throw new SigilError('workload_client.bad_endpoint', `endpoint "${v}" uses an unsupported scheme; only unix sockets are supported`);
  } else {
    path = v;
  }
  if (path.includes('?') || path.includes('#')) throw new SigilError('workload_client.bad_endpoint', `endpoint "${v}" must not have a query or fragment`);
  if (!isAbsolute(path)) throw new SigilError('workload_client.bad_endpoint', `endpoint "${v}" does not name an absolute socket path`);
  return decodeURIComponentSafe(path, v);
}

function decodeURIComponentSafe(p: string, whole: string): string {
  try {
    return decodeURIComponent(p);
  } catch {
    throw new SigilError('workload_client.bad_endpoint', `endpoint "${whole}" has malformed percent-encoding`);
  }
}

/** `--socket`, else SPIFFE_ENDPOINT_SOCKET, else /run/sigil/agent.sock. */
export function resolveWorkloadSocket(explicit?: string, env: NodeJS.ProcessEnv = process.env): string {
  if (explicit !== undefined && explicit.length > 0) return socketPathFromEndpoint(explicit);
  const fromEnv = env.SPIFFE_ENDPOINT_SOCKET;
  if (fromEnv !== undefined && fromEnv.length > 0) return socketPathFromEndpoint(fromEnv);
  return DEFAULT_WORKLOAD_SOCKET;
}

/** Split concatenated DER certificates (SEQUENCE ‖ SEQUENCE ‖ …). */
export function splitDerCertificates(buf: Uint8Array): Buffer[] {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const out: Buffer[] = [];
  let off = 0;
  while (off < b.length) {
    if (b[off] !== 0x30 || off + 2 > b.length) throw new SigilError('workload_client.bad_der', 'certificate list is not concatenated DER');
    const first = b[off + 1]!;
    let len: number;
    let hdr: number;
    if (first < 0x80) {
      len = first;
      hdr = 2;
    } else {
      const n = first & 0x7f;
      if (n === 0 || n > 4 || off + 2 + n > b.length) throw new SigilError('workload_client.bad_der', 'certificate has a bad DER length');
      len = 0;
      for (let i = 0; i < n; i++) len = len * 256 + b[off + 2 + i]!;
      hdr = 2 + n;
    }
    if (off + hdr + len > b.length) throw new SigilError('workload_client.bad_der', 'certificate is truncated');
    out.push(Buffer.from(b.subarray(off, off + hdr + len)));
    off += hdr + len;
  }
  return out;
}

export interface FetchedX509Svid {
  spiffeId: string;
  /** Leaf first. */
  chain: Buffer[];
  keyPkcs8Der: Buffer;
  /** CA certificates of the SVID's trust domain. */
  bundle: Buffer[];
  hint: string;
}
export interface FetchedX509Context {
  svids: FetchedX509Svid[];
  federatedBundles: Map<string, Buffer[]>;
}
export interface FetchedJwtSvid {
  spiffeId: string;
  token: string;
  hint: string;
}

interface RawX509Response {
  svids?: { spiffe_id: string; x509_svid: Buffer; x509_svid_key: Buffer; bundle: Buffer; hint: string }[];
  federated_bundles?: Record<string, Buffer>;
}

type RpcClient = grpc.Client & Record<string, (...args: unknown[]) => unknown>;

let packageDef: grpc.GrpcObject | undefined;

function loadService(): grpc.ServiceClientConstructor {
  if (!packageDef) {
    const def = protoLoader.loadSync(workloadProtoPath(), { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
    packageDef = grpc.loadPackageDefinition(def);
  }
  return packageDef.SpiffeWorkloadAPI as grpc.ServiceClientConstructor;
}

function mapGrpcError(e: unknown): SigilError {
  const err = e as Partial<grpc.ServiceError>;
  const code = typeof err.code === 'number' ? err.code : undefined;
  const name = code !== undefined ? (grpc.status[code] ?? String(code)) : 'ERROR';
  const details = err.details ?? (errorMessage(e));
  const codeMap: Record<number, string> = {
    [grpc.status.PERMISSION_DENIED]: 'workload_client.permission_denied',
    [grpc.status.INVALID_ARGUMENT]: 'workload_client.invalid_argument',
    [grpc.status.UNAVAILABLE]: 'workload_client.unavailable',
    [grpc.status.DEADLINE_EXCEEDED]: 'workload_client.timeout',
    [grpc.status.UNIMPLEMENTED]: 'workload_client.unimplemented',
  };
  return new SigilError(code !== undefined ? (codeMap[code] ?? 'workload_client.call_failed') : 'workload_client.call_failed', `Workload API: ${name}: ${details}`, {
    cause: e,
    status: code === grpc.status.PERMISSION_DENIED ? 403 : 400,
  });
}

export class WorkloadApiClient {
  readonly socketPath: string;
  private readonly rpc: RpcClient;

  constructor(socketPath: string) {
    this.socketPath = socketPath;
    const Ctor = loadService();
    this.rpc = new Ctor(`unix://${socketPath}`, grpc.credentials.createInsecure(), {
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
    }) as unknown as RpcClient;
  }

  private meta(): grpc.Metadata {
    const m = new grpc.Metadata();
    m.set(SECURITY_HEADER, 'true');
    return m;
  }

  private deadline(timeoutMs: number): Date {
    return new Date(Date.now() + timeoutMs);
  }

  /** First message of a server stream, then cancel it. */
  private first<T>(method: string, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const call = (this.rpc[method] as (req: unknown, md: grpc.Metadata, o: grpc.CallOptions) => grpc.ClientReadableStream<T>).call(
        this.rpc,
        {},
        this.meta(),
        { deadline: this.deadline(timeoutMs) },
      );
      let settled = false;
      call.on('data', (msg: T) => {
        if (settled) return;
        settled = true;
        resolve(msg);
        call.cancel();
      });
      call.on('error', (e) => {
        if (settled) return;
        settled = true;
        reject(mapGrpcError(e));
      });
      call.on('end', () => {
        if (settled) return;
        settled = true;
        reject(new SigilError('workload_client.empty_stream', 'Workload API stream ended without a message'));
      });
    });
  }

  async fetchX509Context(timeoutMs = 10_000): Promise<FetchedX509Context> {
    const raw = await this.first<RawX509Response>('FetchX509SVID', timeoutMs);
    const svids = (raw.svids ?? []).map((s) => ({
      spiffeId: s.spiffe_id,
      chain: splitDerCertificates(s.x509_svid),
      keyPkcs8Der: Buffer.from(s.x509_svid_key),
      bundle: splitDerCertificates(s.bundle),
      hint: s.hint,
    }));
    if (svids.length === 0) throw new SigilError('workload_client.empty_response', 'Workload API returned no SVIDs');
    for (const s of svids) {
      if (s.chain.length === 0 || s.keyPkcs8Der.length === 0) throw new SigilError('workload_client.empty_response', `SVID ${s.spiffeId} has no certificate or key`);
    }
    const federatedBundles = new Map<string, Buffer[]>();
    for (const [td, b] of Object.entries(raw.federated_bundles ?? {})) federatedBundles.set(td, splitDerCertificates(b));
    return { svids, federatedBundles };
  }

  async fetchX509Bundles(timeoutMs = 10_000): Promise<Map<string, Buffer[]>> {
    const raw = await this.first<{ bundles?: Record<string, Buffer> }>('FetchX509Bundles', timeoutMs);
    const out = new Map<string, Buffer[]>();
    for (const [td, b] of Object.entries(raw.bundles ?? {})) out.set(td, splitDerCertificates(b));
    return out;
  }

  async fetchJwtBundles(timeoutMs = 10_000): Promise<Map<string, Buffer>> {
    const raw = await this.first<{ bundles?: Record<string, Buffer> }>('FetchJWTBundles', timeoutMs);
    return new Map(Object.entries(raw.bundles ?? {}).map(([k, v]) => [k, Buffer.from(v)]));
  }

  private unary<T>(method: string, req: object, timeoutMs: number): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      (this.rpc[method] as (r: unknown, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v?: T) => void) => void).call(
        this.rpc,
        req,
        this.meta(),
        { deadline: this.deadline(timeoutMs) },
        (e, v) => (e ? reject(mapGrpcError(e)) : resolve(v as T)),
      );
    });
  }

  async fetchJwtSvids(audience: string[], spiffeId?: string, timeoutMs = 10_000): Promise<FetchedJwtSvid[]> {
    const raw = await this.unary<{ svids?: { spiffe_id: string; svid: string; hint: string }[] }>(
      'FetchJWTSVID',
      { audience, spiffe_id: spiffeId ?? '' },
      timeoutMs,
    );
    const out = (raw.svids ?? []).map((s) => ({ spiffeId: s.spiffe_id, token: s.svid, hint: s.hint }));
    if (out.length === 0) throw new SigilError('workload_client.empty_response', 'Workload API returned no JWT-SVIDs');
    return out;
  }

  async validateJwtSvid(token: string, audience: string, timeoutMs = 10_000): Promise<{ spiffeId: string; claims: Record<string, unknown> }> {
    const raw = await this.unary<{ spiffe_id: string; claims?: unknown }>('ValidateJWTSVID', { audience, svid: token }, timeoutMs);
    return { spiffeId: raw.spiffe_id, claims: structToJson(raw.claims) };
  }

  close(): void {
    this.rpc.close();
  }
}

/** google.protobuf.Struct as proto-loader decodes it (with oneofs: true) → plain JSON. */
export function structToJson(s: unknown): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  const fields = (s as { fields?: Record<string, unknown> } | null | undefined)?.fields ?? {};
  for (const [k, v] of Object.entries(fields)) out[k] = valueToJson(v);
  return out;
}

function valueToJson(v: unknown): unknown {
  const o = (v ?? {}) as Record<string, unknown>;
  switch (o.kind) {
    case 'stringValue':
      return o.stringValue;
    case 'numberValue':
      return o.numberValue;
    case 'boolValue':
      return o.boolValue;
    case 'structValue':
      return structToJson(o.structValue);
    case 'listValue':
      return (((o.listValue as { values?: unknown[] } | undefined)?.values) ?? []).map(valueToJson);
    default:
      return null;
  }
}
