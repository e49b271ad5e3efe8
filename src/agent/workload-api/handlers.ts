/**
 * The five methods of `SpiffeWorkloadAPI`: each decodes and checks its request, attests the
 * caller where the answer depends on who it is, and answers from the response cache or the
 * identity source. A handler throws GrpcError (or a SigilError, mapped by ./status.ts) to end its
 * call with a status.
 */
import { isSigilError } from '../../errors.js';
import { SpiffeId } from '../../spiffe/id.js';
import { JWT_SVID_MAX_BYTES } from '../../spiffe/jwtsvid.js';
import type { WorkloadIdentitySource } from '../identity-source.js';
import type { Call } from './call.js';
import type { WorkloadConnection } from './connection.js';
import type { ScheduleDeadline } from './deadlines.js';
import { GrpcError, GrpcStatus } from './grpc.js';
import { encodeMessage, toStruct, workloadCodecs } from './proto.js';
import type { ResponseCache } from './responses.js';
import { noIdentity } from './status.js';
import type { Streams } from './streams.js';
import { decodeEmptyRequest, decodeJwtSvidRequest, decodeValidateJwtSvidRequest } from './wire.js';

export const MAX_AUDIENCE_LENGTH = 256;
/** The longest token ValidateJWTSVID reads: the JWT-SVID limit of src/spiffe/jwtsvid.ts, refused here before any work. */
export const MAX_VALIDATE_TOKEN_BYTES = JWT_SVID_MAX_BYTES;

/** Serves one call whose request message `body` has been read; `deadlineMs` is the client's deadline, if it set one. */
export type Handler = (conn: WorkloadConnection, call: Call, body: Buffer, deadlineMs: number | undefined) => Promise<void>;

export interface HandlerDeps {
  source: WorkloadIdentitySource;
  responses: ResponseCache;
  streams: Streams;
  schedule: ScheduleDeadline;
  /** Audiences in one FetchJWTSVID request. */
  maxAudiences: number;
  /** Upper bound for a unary call when the client sets no deadline. */
  unaryTimeoutMs: number;
}

/** The handlers by method name. */
export function workloadHandlers(d: HandlerDeps): Record<string, Handler> {
  const codecs = workloadCodecs();
  const { source, responses, streams } = d;

  async function withDeadline<T>(p: Promise<T>, ms: number): Promise<T> {
    let cancel: () => void = () => undefined;
    try {
      return await Promise.race([
        p,
        new Promise<never>((_, reject) => {
          cancel = d.schedule(ms, () => reject(new GrpcError(GrpcStatus.DEADLINE_EXCEEDED, 'deadline exceeded')));
        }),
      ]);
    } finally {
      cancel();
    }
  }

  return {
    async FetchX509SVID(conn, call, body) {
      decodeEmptyRequest(body);
      streams.serveX509(conn, call, conn.cachedAttestation() ?? (await conn.attest()));
    },
    async FetchX509Bundles(conn, call, body) {
      decodeEmptyRequest(body);
      streams.serveBundles(conn, call, responses.federating() ? (conn.cachedAttestation() ?? (await conn.attest())) : undefined, 'x509-bundles');
    },
    async FetchJWTBundles(conn, call, body) {
      decodeEmptyRequest(body);
      streams.serveBundles(conn, call, responses.federating() ? (conn.cachedAttestation() ?? (await conn.attest())) : undefined, 'jwt-bundles');
    },
    async FetchJWTSVID(conn, call, body, deadlineMs) {
      const req = decodeJwtSvidRequest(body, d.maxAudiences);
      if (req.audience.length === 0) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'audience must be specified');
      for (const a of req.audience) {
        if (a.length === 0) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'audience must not be empty');
        if (a.length > MAX_AUDIENCE_LENGTH) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `audience longer than ${MAX_AUDIENCE_LENGTH} characters`);
      }
      const audience = [...new Set(req.audience)];
      let spiffeId: string | undefined;
      if (req.spiffeId.length > 0) {
        try {
          spiffeId = SpiffeId.parse(req.spiffeId).toString();
        } catch (e) {
          throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `spiffe_id: ${(e as Error).message}`);
        }
      }
      const a = conn.cachedAttestation() ?? (await conn.attest());
      const results =
        source.jwtSvidsCached?.(a.selectors, audience, spiffeId) ?? (await withDeadline(source.jwtSvidsFor(a.selectors, audience, spiffeId), deadlineMs ?? d.unaryTimeoutMs));
      if (results.length === 0) {
        const n = noIdentity(a);
        throw new GrpcError(n.code, n.message);
      }
      call.reply(responses.jwt(results));
    },
    async ValidateJWTSVID(conn, call, body, deadlineMs) {
      const req = decodeValidateJwtSvidRequest(body);
      if (req.audience.length === 0) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'audience must be specified');
      if (req.svid.length === 0) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'svid must be specified');
      if (req.audience.length > MAX_AUDIENCE_LENGTH) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `audience longer than ${MAX_AUDIENCE_LENGTH} characters`);
      if (req.svid.length > MAX_VALIDATE_TOKEN_BYTES) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `svid is longer than ${MAX_VALIDATE_TOKEN_BYTES} bytes, the largest JWT-SVID accepted`);
      let r: { spiffeId: string; claims: Record<string, unknown> };
      try {
        r = await withDeadline(source.validateJwtSvid(req.svid, req.audience), deadlineMs ?? d.unaryTimeoutMs);
      } catch (e) {
        if (e instanceof GrpcError) throw e;
        if (isSigilError(e) && e.status < 500) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, e.message);
        throw e;
      }
      // Valid for the node is not enough: the token's trust domain must be the own one or one the
      // caller's entries federate with (its FetchJWTBundles set).
      const td = SpiffeId.parse(r.spiffeId).trustDomain;
      if (!responses.trustFor(responses.federating() ? await conn.attest() : undefined).trustDomains.has(td)) {
        throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `JWT-SVID of trust domain ${td} is not trusted by this caller: none of its entries federates with ${td}`);
      }
      call.send(encodeMessage(codecs.ValidateJWTSVIDResponse, { spiffe_id: r.spiffeId, claims: toStruct(r.claims) }));
      call.finish(GrpcStatus.OK);
    },
  };
}
