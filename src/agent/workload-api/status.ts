/**
 * How failures become gRPC statuses: errors from the identity source by their HTTP-like status,
 * and "nothing issued" by whether attestation was complete.
 */
import { isSigilError } from '../../errors.js';
import type { CallerAttestation } from './attest.js';
import { GrpcError, GrpcStatus, type GrpcStatusCode } from './grpc.js';

/** Map errors from the identity source to gRPC status codes by their HTTP-like status. */
export function grpcStatusForError(e: unknown): { code: GrpcStatusCode; message: string; internal: boolean } {
  if (e instanceof GrpcError) return { code: e.code, message: e.message, internal: false };
  if (isSigilError(e)) {
    const s = e.status;
    if (s === 401 || s === 403 || s === 404) return { code: GrpcStatus.PERMISSION_DENIED, message: e.message, internal: false };
    if (s === 400 || s === 422) return { code: GrpcStatus.INVALID_ARGUMENT, message: e.message, internal: false };
    if (s === 429) return { code: GrpcStatus.RESOURCE_EXHAUSTED, message: e.message, internal: false };
    if (s === 502 || s === 503 || s === 504) return { code: GrpcStatus.UNAVAILABLE, message: e.message, internal: false };
  }
  return { code: GrpcStatus.INTERNAL, message: 'internal error', internal: true };
}

export interface StatusAndMessage {
  code: GrpcStatusCode;
  message: string;
}

const NO_IDENTITY: StatusAndMessage = { code: GrpcStatus.PERMISSION_DENIED, message: 'no identity issued' };
export const NO_BUNDLE: StatusAndMessage = { code: GrpcStatus.UNAVAILABLE, message: 'no trust bundle available yet' };

/** When nothing is issued: PermissionDenied, or Unavailable if an attestor failed (retry may help). */
export function noIdentity(a: CallerAttestation): StatusAndMessage {
  if (a.failed.length > 0) return { code: GrpcStatus.UNAVAILABLE, message: `workload attestation incomplete (${a.failed.join(', ')} failed); retry` };
  return NO_IDENTITY;
}
