/**
 * HTTPS client for the verifier's agent API (docs/api.md).
 *
 * - TLS trust = the current X.509 bundle of the trust domain (bootstrap `trustBundle` first, then
 *   the bundle the verifier returns); the server must present exactly one URI SAN equal to
 *   `spiffe://<td>/sigil/verifier` — hostname checking does not apply.
 * - Agent calls present the node SVID as TLS client certificate (mTLS).
 * - Every request has a deadline (10 s) and a response size limit; failures become SigilErrors:
 *   the verifier's own `error.code` when it sent one, `agent.verifier_unreachable` for network
 *   problems and timeouts, `agent.verifier_untrusted` when the verifier's certificate does not chain
 *   to the trust bundle or has the wrong SPIFFE ID, `agent.verifier_bad_response` for malformed answers.
 */
import { Agent as HttpsAgent, request } from 'node:https';
import type { KeyObject } from 'node:crypto';
import type { PeerCertificate } from 'node:tls';
import { SigilError } from '../errors.js';
import { certsToPem } from '../spiffe/pem.js';
import { TLS_TRUST_ERRORS, uriSans } from '../util/tls-peer.js';

export const DEFAULT_TIMEOUT_MS = 10_000;
export const DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024;
/** The authorized-entries list can be large on busy nodes. */
export const ENTRIES_MAX_RESPONSE_BYTES = 64 * 1024 * 1024;


export interface AuthorizedEntry {
  id: string;
  spiffeId: string;
  parentId: string;
  selectors: string[];
  x509SvidTtl: number;
  jwtSvidTtl: number;
  dnsNames: string[];
  hint: string;
  admin: boolean;
  expiresAt: string | null;
  revisionNumber: number;
  /** Trust domains the entry federates with (absent when none): the agent fetches foreign bundles only for these. */
  federatesWith?: string[];
}

export interface AttestBeginResult {
  session: string;
  nonce: Buffer;
  challenges: Record<string, unknown>;
}

export interface AttestFinishResult {
  agentId: string;
  svid: Buffer[];
  bundle: unknown;
  result: unknown;
}

/** An entries sync: the new set (undefined: unchanged, HTTP 304) and the bundle ETag the answer named. */
export interface EntriesSync {
  set: { entries: AuthorizedEntry[]; revision: string } | undefined;
  bundleEtag: string | undefined;
}

export interface IssuedX509 {
  entryId: string;
  spiffeId: string;
  chain: Buffer[];
  expiresAt: Date;
}

export interface ClientIdentity {
  chainDer: Buffer[];
  privateKey: KeyObject;
}

export interface VerifierClientOptions {
  trustDomain: string;
  address: string;
  port: number;
  /** CA certificates (DER) the verifier's certificate must chain to. */
  trust: Buffer[];
  timeoutMs?: number;
  maxResponseBytes?: number;
}

interface RawResponse {
  status: number;
  body: unknown;
  headers: Record<string, string | string[] | undefined>;
}

function bad(what: string): never {
  throw new SigilError('agent.verifier_bad_response', `verifier answer malformed: ${what}`, { status: 502 });
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string') bad(`${what} is not a string`);
  return v;
}

function b64List(v: unknown, what: string, max = 16): Buffer[] {
  if (!Array.isArray(v) || v.length === 0 || v.length > max) bad(`${what} must be a list of 1–${max} base64 strings`);
  return v.map((s, i) => {
    const t = str(s, `${what}[${i}]`);
    if (!/^[A-Za-z0-9+/]*={0,2}$/.test(t)) bad(`${what}[${i}] is not base64`);
    return Buffer.from(t, 'base64');
  });
}

function obj(v: unknown, what: string): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad(`${what} is not an object`);
  return v as Record<string, unknown>;
}

function date(v: unknown, what: string): Date {
  const d = new Date(str(v, what));
  if (Number.isNaN(d.getTime())) bad(`${what} is not an ISO time`);
  return d;
}

function parseEntry(v: unknown, i: number): AuthorizedEntry {
  const e = obj(v, `entries[${i}]`);
  const strings = (x: unknown, what: string) => {
    if (!Array.isArray(x) || !x.every((s) => typeof s === 'string')) bad(`entries[${i}].${what} is not a list of strings`);
    return x as string[];
  };
  const num = (x: unknown, what: string) => {
    if (typeof x !== 'number' || !Number.isFinite(x) || x < 0) bad(`entries[${i}].${what} is not a non-negative number`);
    return x;
  };
  const id = str(e.id, `entries[${i}].id`);
  if (id.length === 0 || id.length > 64) bad(`entries[${i}].id must be 1–64 characters`);
  const selectors = strings(e.selectors, 'selectors');
  if (selectors.length === 0) bad(`entries[${i}] has no selectors`);
  return {
    id,
    spiffeId: str(e.spiffeId, `entries[${i}].spiffeId`),
    parentId: str(e.parentId, `entries[${i}].parentId`),
    selectors,
    x509SvidTtl: num(e.x509SvidTtl ?? 0, 'x509SvidTtl'),
    jwtSvidTtl: num(e.jwtSvidTtl ?? 0, 'jwtSvidTtl'),
    dnsNames: strings(e.dnsNames ?? [], 'dnsNames'),
    hint: typeof e.hint === 'string' ? e.hint : '',
    admin: e.admin === true,
    expiresAt: typeof e.expiresAt === 'string' ? e.expiresAt : null,
    revisionNumber: num(e.revisionNumber ?? 0, 'revisionNumber'),
    ...(e.federatesWith !== undefined && !(Array.isArray(e.federatesWith) && e.federatesWith.length === 0) ? { federatesWith: strings(e.federatesWith, 'federatesWith') } : {}),
  };
}


export class VerifierClient {
  readonly trustDomain: string;
  readonly serverId: string;
  private readonly address: string;
  private readonly port: number;
  private readonly timeoutMs: number;
  private readonly maxResponseBytes: number;
  private trustPem: string;
  private identity: { cert: string; key: string } | undefined;
  private readonly agent: HttpsAgent;

  constructor(opts: VerifierClientOptions) {
    this.trustDomain = opts.trustDomain;
    this.serverId = `spiffe://${opts.trustDomain}/sigil/verifier`;
    this.address = opts.address;
    this.port = opts.port;
    this.timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.maxResponseBytes = opts.maxResponseBytes ?? DEFAULT_MAX_RESPONSE_BYTES;
    this.trustPem = certsToPem(opts.trust);
    // Free sockets time out before the verifier's keep-alive (10 s) so a reused socket is never half closed.
    // No TLS session cache: every new connection verifies the verifier's certificate in full.
    this.agent = new HttpsAgent({ keepAlive: true, maxSockets: 8, timeout: 5_000, maxCachedSessions: 0 });
  }

  /** Replace the CA certificates the verifier's TLS certificate must chain to. */
  setTrust(ders: Buffer[]): void {
    if (ders.length === 0) throw new SigilError('agent.no_trust_bundle', 'refusing an empty trust bundle');
    this.trustPem = certsToPem(ders);
  }

  /** Node SVID + key used as TLS client certificate for agent calls (undefined: none). */
  setIdentity(id: ClientIdentity | undefined): void {
    this.identity = id ? { cert: certsToPem(id.chainDer), key: id.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string } : undefined;
  }

  hasIdentity(): boolean {
    return this.identity !== undefined;
  }

  /** Close idle keep-alive connections. */
  close(): void {
    this.agent.destroy();
  }

  private call(
    method: string,
    path: string,
    body: unknown,
    o: { mtls: boolean; headers?: Record<string, string>; maxBytes?: number; timeoutMs?: number; signal?: AbortSignal },
  ): Promise<RawResponse> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    const maxBytes = o.maxBytes ?? this.maxResponseBytes;
    const timeoutMs = o.timeoutMs ?? this.timeoutMs;
    if (o.mtls && !this.identity) {
      return Promise.reject(new SigilError('agent.not_attested', `${method} ${path} needs a node SVID; the agent has not attested yet`, { status: 503 }));
    }
    if (o.signal?.aborted) return Promise.reject(new SigilError('agent.request_cancelled', `${method} ${path} was cancelled`, { status: 503 }));
    const serverId = this.serverId;
    return new Promise<RawResponse>((resolve, reject) => {
      let settled = false;
      const fail = (e: SigilError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        reject(e);
      };
      const req = request(
        {
          host: this.address,
          port: this.port,
          method,
          path,
          agent: this.agent,
          ca: this.trustPem,
          ...(o.mtls && this.identity ? { cert: this.identity.cert, key: this.identity.key } : {}),
          minVersion: 'TLSv1.2',
          headers: {
            accept: 'application/json',
            ...(payload ? { 'content-type': 'application/json', 'content-length': String(payload.length) } : {}),
            ...(o.headers ?? {}),
          },
          checkServerIdentity: (_host: string, cert: PeerCertificate) => {
            const uris = uriSans(cert);
            if (uris.length === 1 && uris[0] === serverId) return undefined;
            return new SigilError('agent.verifier_untrusted', `verifier certificate has URI SAN ${JSON.stringify(uris)}, expected exactly ${serverId}`, { status: 502 });
          },
        },
        (res) => {
          const chunks: Buffer[] = [];
          let size = 0;
          res.on('data', (c: Buffer) => {
            size += c.length;
            if (size > maxBytes) {
              fail(new SigilError('agent.verifier_bad_response', `verifier answer to ${method} ${path} is larger than ${maxBytes} bytes`, { status: 502 }));
              req.destroy();
              return;
            }
            chunks.push(c);
          });
          res.on('error', (e) => fail(new SigilError('agent.verifier_unreachable', `verifier connection broke during ${method} ${path}: ${e.message}`, { status: 503, cause: e })));
          res.on('end', () => {
            if (settled) return;
            const status = res.statusCode ?? 0;
            const text = Buffer.concat(chunks).toString('utf8');
            let parsed: unknown;
            if (text.length > 0) {
              try {
                parsed = JSON.parse(text);
              } catch {
                if (status >= 200 && status < 300) {
                  fail(new SigilError('agent.verifier_bad_response', `verifier answer to ${method} ${path} is not JSON (HTTP ${status})`, { status: 502 }));
                  return;
                }
              }
            }
            if (status >= 400) {
              const err = (parsed as { error?: { code?: unknown; message?: unknown } } | undefined)?.error;
              if (err && typeof err.code === 'string' && /^[a-z0-9_.]{1,100}$/.test(err.code)) {
                const msg = typeof err.message === 'string' ? err.message.slice(0, 500) : `HTTP ${status}`;
                fail(new SigilError(err.code, `verifier refused ${method} ${path}: ${msg}`, { status }));
              } else {
                fail(new SigilError('agent.verifier_error', `verifier answered ${method} ${path} with HTTP ${status}`, { status: status >= 500 ? 503 : status }));
              }
              return;
            }
            settled = true;
            clearTimeout(timer);
            resolve({ status, body: parsed, headers: res.headers });
          });
        },
      );
      const timer = setTimeout(() => {
        fail(new SigilError('agent.verifier_unreachable', `verifier did not answer ${method} ${path} within ${timeoutMs} ms`, { status: 503 }));
        req.destroy();
      }, timeoutMs);
      if (o.signal) {
        const onAbort = (): void => {
          fail(new SigilError('agent.request_cancelled', `${method} ${path} was cancelled`, { status: 503 }));
          req.destroy();
        };
        o.signal.addEventListener('abort', onAbort, { once: true });
        req.once('close', () => o.signal?.removeEventListener('abort', onAbort));
      }
      req.on('error', (e: Error & { code?: string }) => {
        if (e instanceof SigilError) return fail(e);
        if (e.code && TLS_TRUST_ERRORS.has(e.code)) {
          return fail(new SigilError('agent.verifier_untrusted', `verifier TLS certificate not trusted (${e.code}): ${e.message}`, { status: 502, cause: e }));
        }
        fail(new SigilError('agent.verifier_unreachable', `cannot reach verifier at ${this.address}:${this.port}: ${e.code ?? ''} ${e.message}`.replace(/\s+/g, ' '), { status: 503, cause: e }));
      });
      if (payload) req.write(payload);
      req.end();
    });
  }

  async attestBegin(attestors: Record<string, unknown>, csrDer: Buffer): Promise<AttestBeginResult> {
    const r = await this.call('POST', '/v1/attest', { attestors, csr: csrDer.toString('base64') }, { mtls: false });
    const b = obj(r.body, 'attest answer');
    const session = str(b.session, 'session');
    if (!/^[A-Za-z0-9_-]{1,128}$/.test(session)) bad('session is not a safe path segment');
    const nonce = Buffer.from(str(b.nonce, 'nonce'), 'base64');
    if (nonce.length !== 32) bad('nonce is not 32 bytes');
    return { session, nonce, challenges: obj(b.challenges ?? {}, 'challenges') };
  }

  async attestFinish(session: string, responses: Record<string, unknown>): Promise<AttestFinishResult> {
    const r = await this.call('POST', `/v1/attest/${encodeURIComponent(session)}`, { responses }, { mtls: false });
    const b = obj(r.body, 'attest answer');
    return { agentId: str(b.agentId, 'agentId'), svid: b64List(b.svid, 'svid'), bundle: obj(b.bundle, 'bundle'), result: b.result };
  }

  async renew(csrDer: Buffer): Promise<{ svid: Buffer[]; bundle: unknown }> {
    const r = await this.call('POST', '/v1/agent/renew', { csr: csrDer.toString('base64') }, { mtls: true });
    const b = obj(r.body, 'renew answer');
    return { svid: b64List(b.svid, 'svid'), bundle: obj(b.bundle, 'bundle') };
  }

  /** Authorized entries; with `revision`, `undefined` means unchanged (HTTP 304). */
  async authorizedEntries(revision?: string): Promise<{ entries: AuthorizedEntry[]; revision: string } | undefined> {
    return (await this.syncEntries(revision)).set;
  }

  /**
   * One sync: the authorized entries (`set` undefined when unchanged, HTTP 304) and the ETag the
   * verifier's bundle has now (header `sigil-bundle-etag`; undefined from a verifier that does not
   * send it, or a malformed one), so the caller fetches the bundle only when that differs.
   */
  async syncEntries(revision?: string): Promise<EntriesSync> {
    return this.entries(revision, undefined);
  }

  /**
   * Long-poll (docs/api.md): held by the verifier until the authorized set differs from `revision`
   * (`set` is the new one) or `waitSeconds` pass (`set` undefined, HTTP 304); either answer names the
   * bundle ETag as a sync does. The verifier caps the wait (`longPoll.maxWait`) and may refuse the
   * poll (`entries.long_poll_disabled`, `entries.wait_limit`, `entries.agent_wait_limit`). `signal`
   * cancels it (`agent.request_cancelled`). Sent through the same connection pool as every other
   * mTLS call, so while nothing else is in flight the agent holds one connection to the verifier.
   */
  async waitEntries(revision: string, waitSeconds: number, signal?: AbortSignal): Promise<EntriesSync> {
    return this.entries(revision, { waitSeconds: Math.max(1, Math.floor(waitSeconds)), ...(signal ? { signal } : {}) });
  }

  /** waitEntries without the bundle ETag. */
  async waitAuthorizedEntries(revision: string, waitSeconds: number, signal?: AbortSignal): Promise<{ entries: AuthorizedEntry[]; revision: string } | undefined> {
    return (await this.waitEntries(revision, waitSeconds, signal)).set;
  }

  private async entries(revision: string | undefined, wait: { waitSeconds: number; signal?: AbortSignal } | undefined): Promise<EntriesSync> {
    const r = await this.call('GET', wait ? `/v1/entries/authorized?wait=${wait.waitSeconds}` : '/v1/entries/authorized', undefined, {
      mtls: true,
      maxBytes: ENTRIES_MAX_RESPONSE_BYTES,
      ...(revision !== undefined ? { headers: { 'if-none-match': revision } } : {}),
      ...(wait ? { timeoutMs: wait.waitSeconds * 1000 + this.timeoutMs, ...(wait.signal ? { signal: wait.signal } : {}) } : {}),
    });
    const tag = r.headers['sigil-bundle-etag'];
    const bundleEtag = typeof tag === 'string' && tag.length > 0 && tag.length <= 128 ? tag : undefined;
    if (r.status === 304) return { set: undefined, bundleEtag };
    const b = obj(r.body, 'entries answer');
    if (!Array.isArray(b.entries)) bad('entries is not a list');
    return { set: { entries: b.entries.map(parseEntry), revision: str(b.revision, 'revision') }, bundleEtag };
  }

  /** Sign CSRs for entries (at most 500 per call, as the verifier allows). */
  async signX509(csrs: { entryId: string; csr: Buffer }[]): Promise<IssuedX509[]> {
    if (csrs.length === 0) return [];
    if (csrs.length > 500) throw new SigilError('agent.batch_too_large', `at most 500 CSRs per call, got ${csrs.length}`);
    const r = await this.call('POST', '/v1/svid/x509', { csrs: csrs.map((c) => ({ entryId: c.entryId, csr: c.csr.toString('base64') })) }, { mtls: true });
    const b = obj(r.body, 'x509 answer');
    if (!Array.isArray(b.svids)) bad('svids is not a list');
    return b.svids.map((v, i) => {
      const s = obj(v, `svids[${i}]`);
      return { entryId: str(s.entryId, `svids[${i}].entryId`), spiffeId: str(s.spiffeId, `svids[${i}].spiffeId`), chain: b64List(s.chain, `svids[${i}].chain`), expiresAt: date(s.expiresAt, `svids[${i}].expiresAt`) };
    });
  }

  async mintJwt(entryId: string, audience: string[]): Promise<{ token: string; spiffeId: string; expiresAt: Date }> {
    const r = await this.call('POST', '/v1/svid/jwt', { entryId, audience }, { mtls: true });
    const b = obj(r.body, 'jwt answer');
    return { token: str(b.token, 'token'), spiffeId: str(b.spiffeId, 'spiffeId'), expiresAt: date(b.expiresAt, 'expiresAt') };
  }

  /** The trust domain's SPIFFE bundle (JWKS object). No client certificate needed. */
  async bundle(): Promise<unknown> {
    return (await this.bundleIfChanged(undefined))?.jwks;
  }

  /**
   * The bundle unless the verifier's ETag is still `etag` (undefined: HTTP 304, the bundle held is
   * current); `etag` is the ETag the verifier sent with it (undefined if it sent none).
   */
  async bundleIfChanged(etag: string | undefined): Promise<{ jwks: unknown; etag: string | undefined } | undefined> {
    const r = await this.call('GET', '/v1/bundle', undefined, { mtls: false, ...(etag !== undefined ? { headers: { 'if-none-match': etag } } : {}) });
    if (r.status === 304) {
      if (etag === undefined) bad('HTTP 304 to an unconditional bundle request');
      return undefined;
    }
    const tag = r.headers.etag;
    return { jwks: obj(r.body, 'bundle'), etag: typeof tag === 'string' && tag.length <= 128 ? tag : undefined };
  }
}
