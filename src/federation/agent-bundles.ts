/**
 * The agent's foreign bundles (SPIFFE Federation): what `GET /v1/bundles/federated` returns for
 * this agent — the last good bundle of every trust domain its authorized entries federate with,
 * and which entry federates with which — checked again here (same caps as the verifier; the local
 * trust domain is refused so a foreign bundle can never replace the agent's own), kept in memory
 * for the Workload API and persisted in dataDir (`federated.json`) so a restarted agent serves
 * them while its verifier is down.
 */
import { request } from 'node:https';
import { join } from 'node:path';
import type { PeerCertificate } from 'node:tls';
import type { Logger } from 'pino';
import { SigilError, errorFields } from '../errors.js';
import type { SpiffeBundle } from '../spiffe/bundle.js';
import { parseTrustDomain } from '../spiffe/id.js';
import { certsToPem } from '../spiffe/pem.js';
import { uriSans } from '../util/tls-peer.js';
import { readSmallFile, writeFileAtomic } from '../agent/files.js';
import { FOREIGN_BUNDLE_MAX_KEYS, parseForeignBundle } from './validate.js';
import { timerDelayMs } from '../util/timers.js';

/** Most foreign trust domains an agent holds bundles of. */
export const AGENT_MAX_FEDERATED = 256;
const ANSWER_MAX_BYTES = 16 * 1024 * 1024;

/** What the Workload API asks of the agent's cache about foreign bundles (svid-cache.ts implements it). */
export interface FederatedBundleSource {
  /** Foreign X.509 bundles (`spiffe://td` → CA certificates) of the trust domains these entries federate with. */
  federatedX509For(entryIds: readonly string[]): Map<string, Buffer[]>;
}

function bad(msg: string): never {
  throw new SigilError('federation.bad_answer', `verifier answer to GET /v1/bundles/federated malformed: ${msg}`, { status: 502 });
}

export class FederatedBundles {
  private byTd = new Map<string, SpiffeBundle>();
  private byEntry = new Map<string, string[]>();
  private canonical = '{}';
  private readonly path: string;

  constructor(
    private readonly trustDomain: string,
    dataDir: string,
    private readonly logger: Logger,
  ) {
    this.path = join(dataDir, 'federated.json');
    try {
      const b = readSmallFile(this.path, ANSWER_MAX_BYTES);
      if (b) this.adopt(JSON.parse(b.toString('utf8')), false);
    } catch (e) {
      logger.warn(errorFields(e), 'persisted federated bundles unusable; waiting for the verifier');
    }
  }

  bundles(): ReadonlyMap<string, SpiffeBundle> {
    return this.byTd;
  }

  /** Trust domains the entry federates with (those whose bundle the agent holds). */
  trustDomainsOf(entryId: string): string[] {
    return (this.byEntry.get(entryId) ?? []).filter((td) => this.byTd.has(td));
  }

  /**
   * Take the verifier's answer `{ bundles: { td: jwks }, entries: { entryId: [td] } }`. A bundle that
   * fails the checks is left out (logged) and the one held before for that trust domain kept.
   * Returns whether anything changed; then it is persisted.
   */
  adopt(answer: unknown, persist = true): boolean {
    if (typeof answer !== 'object' || answer === null || Array.isArray(answer)) bad('not an object');
    const a = answer as { bundles?: unknown; entries?: unknown };
    if (typeof a.bundles !== 'object' || a.bundles === null || Array.isArray(a.bundles)) bad('bundles is not an object');
    if (typeof a.entries !== 'object' || a.entries === null || Array.isArray(a.entries)) bad('entries is not an object');
    const tds = Object.keys(a.bundles);
    if (tds.length > AGENT_MAX_FEDERATED) bad(`more than ${AGENT_MAX_FEDERATED} trust domains`);
    const byTd = new Map<string, SpiffeBundle>();
    for (const [rawTd, jwks] of Object.entries(a.bundles as Record<string, unknown>)) {
      let td: string;
      try {
        td = parseTrustDomain(rawTd);
      } catch (e) {
        this.logger.error({ trustDomain: rawTd.slice(0, 80), ...errorFields(e) }, 'federated bundle for an invalid trust domain name ignored');
        continue;
      }
      if (td === this.trustDomain) {
        this.logger.error({ trustDomain: td }, 'a "federated" bundle for the agent\'s own trust domain was refused; the own bundle is only ever the verifier\'s');
        continue;
      }
      try {
        if (Array.isArray((jwks as { keys?: unknown })?.keys) && (jwks as { keys: unknown[] }).keys.length > FOREIGN_BUNDLE_MAX_KEYS) bad(`bundle of ${td} has too many keys`);
        byTd.set(td, parseForeignBundle(td, JSON.stringify(jwks)));
      } catch (e) {
        const held = this.byTd.get(td);
        if (held) byTd.set(td, held);
        this.logger.error({ trustDomain: td, ...errorFields(e) }, 'federated bundle refused; keeping the one held');
      }
    }
    const byEntry = new Map<string, string[]>();
    for (const [id, list] of Object.entries(a.entries as Record<string, unknown>)) {
      if (!Array.isArray(list) || !list.every((t) => typeof t === 'string')) bad(`entries.${id.slice(0, 64)} is not a list of trust domains`);
      byEntry.set(id, (list as string[]).filter((t) => t !== this.trustDomain));
    }
    const canonical = JSON.stringify({
      b: [...byTd].map(([td, b]) => [td, b.toJwks()]).sort(),
      e: [...byEntry].sort(),
    });
    if (canonical === this.canonical) return false;
    const before = new Set(this.byTd.keys());
    this.byTd = byTd;
    this.byEntry = byEntry;
    this.canonical = canonical;
    if (persist) {
      const doc = { bundles: Object.fromEntries([...byTd].map(([td, b]) => [td, b.toJwks()])), entries: Object.fromEntries(byEntry) };
      writeFileAtomic(this.path, `${JSON.stringify(doc)}\n`, 0o644);
    }
    this.logger.info({ trustDomains: [...byTd.keys()], added: [...byTd.keys()].filter((t) => !before.has(t)), sequences: Object.fromEntries([...byTd].map(([td, b]) => [td, b.sequence])) }, 'federated bundles updated');
    return true;
  }
}

export interface FederatedFetchTarget {
  address: string;
  port: number;
  trustDomain: string;
  /** The verifier's trust domain CA certificates (DER). */
  trust: () => Buffer[];
  /** The node SVID (leaf first) and key: the mTLS client identity, or undefined before attestation. */
  identity: () => { chainDer: Buffer[]; privateKey: import('node:crypto').KeyObject } | undefined;
  timeoutMs?: number;
}

/** GET /v1/bundles/federated over mTLS with the node SVID; the verifier must be `spiffe://<td>/sigil/verifier`. */
export function fetchFederatedFromVerifier(t: FederatedFetchTarget): Promise<unknown> {
  const id = t.identity();
  if (!id) return Promise.reject(new SigilError('agent.not_attested', 'GET /v1/bundles/federated needs a node SVID; the agent has not attested yet', { status: 503 }));
  const serverId = `spiffe://${t.trustDomain}/sigil/verifier`;
  const timeoutMs = timerDelayMs(t.timeoutMs ?? 10_000);
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = (e: Error | undefined, v?: unknown): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (e) reject(e);
      else resolve(v);
    };
    const req = request(
      {
        host: t.address,
        port: t.port,
        method: 'GET',
        path: '/v1/bundles/federated',
        agent: false,
        ca: certsToPem(t.trust()),
        cert: certsToPem(id.chainDer),
        key: id.privateKey.export({ format: 'pem', type: 'pkcs8' }) as string,
        minVersion: 'TLSv1.2',
        headers: { accept: 'application/json' },
        checkServerIdentity: (_h: string, cert: PeerCertificate) => {
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
          if (size > ANSWER_MAX_BYTES) {
            done(new SigilError('federation.bad_answer', `verifier answer to GET /v1/bundles/federated is larger than ${ANSWER_MAX_BYTES} bytes`, { status: 502 }));
            req.destroy();
          } else chunks.push(c);
        });
        res.on('error', (e) => done(new SigilError('agent.verifier_unreachable', `verifier connection broke: ${e.message}`, { status: 503 })));
        res.on('end', () => {
          let body: unknown;
          try {
            body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
          } catch {
            return done(new SigilError('federation.bad_answer', `verifier answered GET /v1/bundles/federated with HTTP ${res.statusCode}, not JSON`, { status: 502 }));
          }
          if ((res.statusCode ?? 500) >= 400) {
            const err = (body as { error?: { code?: unknown; message?: unknown } }).error;
            const code = typeof err?.code === 'string' && /^[a-z0-9_.]{1,100}$/.test(err.code) ? err.code : 'agent.verifier_error';
            return done(new SigilError(code, `verifier refused GET /v1/bundles/federated: ${typeof err?.message === 'string' ? err.message.slice(0, 300) : `HTTP ${res.statusCode}`}`, { status: res.statusCode ?? 502 }));
          }
          done(undefined, body);
        });
      },
    );
    const timer = setTimeout(() => {
      done(new SigilError('agent.verifier_unreachable', `verifier did not answer GET /v1/bundles/federated within ${timeoutMs} ms`, { status: 503 }));
      req.destroy();
    }, timeoutMs);
    req.on('error', (e: Error & { code?: string }) => {
      if (e instanceof SigilError) return done(e);
      done(new SigilError('agent.verifier_unreachable', `cannot reach verifier at ${t.address}:${t.port}: ${`${e.code ?? ''} ${e.message}`.trim()}`, { status: 503, cause: e }));
    });
    req.end();
  });
}
