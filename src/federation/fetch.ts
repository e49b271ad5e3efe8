/**
 * Fetching a foreign bundle from its bundle endpoint (SPIFFE Federation standard, profiles
 * `https_web` and `https_spiffe`). The only I/O of federation on the verifier; what comes back is
 * checked by `parseForeignBundle` (validate.ts).
 *
 * - https_web: ordinary Web PKI TLS — the system's roots (or the relationship's `webCaPem`) and the
 *   URL's host name checked against the certificate.
 * - https_spiffe: the endpoint's certificate must chain to the X.509 authorities of the last good
 *   bundle of that trust domain (the initial bundle at first) and carry exactly one URI SAN, equal
 *   to `endpointSpiffeId`; the host name is not checked (the SPIFFE ID is the identity).
 */
import { request } from 'node:https';
import type { PeerCertificate } from 'node:tls';
import { SigilError } from '../errors.js';
import type { SpiffeBundle } from '../spiffe/bundle.js';
import { certsToPem } from '../spiffe/pem.js';
import { TLS_TRUST_ERRORS, uriSans } from '../util/tls-peer.js';
import { timerDelayMs } from '../util/timers.js';
import { FOREIGN_BUNDLE_MAX_BYTES } from './validate.js';
import type { ValidRelationship } from './validate.js';

export const FETCH_TIMEOUT_MS = 10_000;

export interface FetchOptions {
  /** https_spiffe: the last good bundle of the foreign trust domain (its X.509 authorities authenticate the endpoint). */
  trust?: SpiffeBundle;
  /** At most MAX_TIMER_MS (util/timers.ts); the config allows at most 10 min. */
  timeoutMs?: number;
  maxBytes?: number;
  /** Aborting it abandons the fetch (the relationship changed): the request is destroyed and the promise rejects. */
  signal?: AbortSignal;
}

/** GET the bundle document (raw bytes); every failure is a `SigilError` naming what went wrong. */
export function fetchBundleDocument(rel: ValidRelationship, o: FetchOptions = {}): Promise<Buffer> {
  const maxBytes = o.maxBytes ?? FOREIGN_BUNDLE_MAX_BYTES;
  const timeoutMs = timerDelayMs(o.timeoutMs ?? FETCH_TIMEOUT_MS);
  const url = new URL(rel.bundleEndpointUrl);
  const where = `bundle endpoint ${rel.bundleEndpointUrl} (${rel.trustDomain})`;
  let tls: Record<string, unknown>;
  if (rel.profile === 'https_spiffe') {
    const anchors = o.trust?.x509Authorities ?? [];
    if (anchors.length === 0) return Promise.reject(new SigilError('federation.no_trust_bundle', `${where}: profile https_spiffe needs a bundle of ${rel.trustDomain} to authenticate the endpoint; give the relationship an initial bundle`, { status: 409 }));
    const want = rel.endpointSpiffeId;
    tls = {
      ca: certsToPem(anchors),
      checkServerIdentity: (_host: string, cert: PeerCertificate) => {
        const uris = uriSans(cert);
        if (uris.length === 1 && uris[0] === want) return undefined;
        return new SigilError('federation.endpoint_id_mismatch', `${where} presented a certificate with URI SANs ${JSON.stringify(uris)}; expected exactly ${want}`, { status: 502 });
      },
    };
  } else {
    tls = rel.webCaPem ? { ca: rel.webCaPem } : {};
  }
  return new Promise<Buffer>((resolve, reject) => {
    let settled = false;
    const done = (e: SigilError | undefined, b?: Buffer): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (e) reject(e);
      else resolve(b as Buffer);
    };
    const req = request(
      {
        protocol: 'https:',
        hostname: url.hostname.replace(/^\[|\]$/g, ''),
        port: url.port === '' ? 443 : Number(url.port),
        path: `${url.pathname}${url.search}`,
        method: 'GET',
        agent: false,
        minVersion: 'TLSv1.2',
        headers: { accept: 'application/json' },
        ...(o.signal ? { signal: o.signal } : {}),
        ...tls,
      },
      (res) => {
        if (res.statusCode !== 200) {
          res.resume();
          done(new SigilError('federation.endpoint_http_error', `${where} answered HTTP ${res.statusCode ?? '?'}`, { status: 502 }));
          req.destroy();
          return;
        }
        const declared = Number(res.headers['content-length'] ?? NaN);
        if (Number.isFinite(declared) && declared > maxBytes) {
          done(new SigilError('federation.bundle_too_large', `${where} announced a bundle of ${declared} bytes; at most ${maxBytes} are accepted`, { status: 502 }));
          req.destroy();
          return;
        }
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > maxBytes) {
            done(new SigilError('federation.bundle_too_large', `${where} sent more than ${maxBytes} bytes`, { status: 502 }));
            req.destroy();
            return;
          }
          chunks.push(c);
        });
        res.on('error', (e) => done(new SigilError('federation.endpoint_unreachable', `${where}: connection broke: ${e.message}`, { status: 503, cause: e })));
        res.on('end', () => done(undefined, Buffer.concat(chunks)));
      },
    );
    const timer = setTimeout(() => {
      done(new SigilError('federation.endpoint_unreachable', `${where} did not answer within ${timeoutMs} ms`, { status: 503 }));
      req.destroy();
    }, timeoutMs);
    req.on('error', (e: Error & { code?: string }) => {
      if (e instanceof SigilError) return done(e);
      if (o.signal?.aborted) return done(new SigilError('federation.refresh_superseded', `${where}: fetch abandoned: the relationship changed`, { status: 409, cause: e }));
      if (e.code && TLS_TRUST_ERRORS.has(e.code)) {
        const why = e.code === 'CERT_HAS_EXPIRED' ? 'a certificate of its chain has expired' : e.code === 'CERT_NOT_YET_VALID' ? 'a certificate of its chain is not valid yet' : 'TLS certificate not trusted';
        return done(new SigilError('federation.endpoint_untrusted', `${where}: ${why} (${e.code}): ${e.message}`, { status: 502, cause: e }));
      }
      done(new SigilError('federation.endpoint_unreachable', `${where}: ${`${e.code ?? ''} ${e.message}`.trim()}`, { status: 503, cause: e }));
    });
    req.end();
  });
}
