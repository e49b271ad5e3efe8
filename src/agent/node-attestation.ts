/**
 * The agent's node identity (DESIGN §3): attest with every configured node attestor in one
 * session, keep the node SVID (the agent's mTLS client certificate) in dataDir, renew it at half
 * life, and re-attest when it can no longer be renewed.
 *
 * Lifecycle:
 * - start: a persisted node SVID that still verifies against the persisted bundle and matches the
 *   persisted key is used as is (join tokens are single use, so a restart must not need a new one);
 * - renew at half life via POST /v1/agent/renew (same key);
 * - re-attest when the SVID expired, or the verifier says the agent is evicted / unknown / its SVID
 *   is stale or untrusted (a fresh node key is made then);
 * - when the verifier's TLS certificate does not chain to the held bundle, add the bootstrap
 *   trustBundle to the TLS trust and retry, keeping the node SVID: a TLS failure says nothing about
 *   the node SVID (if the verifier's CA was replaced, the verifier refuses the SVID and that
 *   refusal leads to re-attestation); throwing a still-valid SVID away would need a new join token;
 * - every failure is retried with exponential backoff and full jitter (base 1 s, cap 60 s); while
 *   a node SVID is still valid, a renewal is retried at least four times before it expires;
 * - a node SVID that expired and cannot be replaced by attesting again is reported as
 *   `agent.node_svid_expired` (log at error, `error()`, status, /readyz), naming the attestation
 *   failure, instead of looking like an ordinary retry.
 */
import { generateKeyPair, type KeyObject } from 'node:crypto';
import { promisify } from 'node:util';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { SigilError, asSigilError, errorFields } from '../errors.js';
import { sessionBinding } from '../plugins/binding.js';
import type { NodeAttestorAgent } from '../plugins/types.js';
import { parseCertificate } from '../spiffe/cert.js';
import { createCsr } from '../spiffe/csr.js';
import { loadPrivateKeyPkcs8, publicKeyOf, savePrivateKeyPkcs8, spkiDer } from '../spiffe/keys.js';
import { SpiffeBundle } from '../spiffe/bundle.js';
import { certsToPem, pemToDers } from '../spiffe/pem.js';
import { verifyX509Svid } from '../spiffe/x509svid.js';
import { Backoff, type BackoffOptions } from './backoff.js';
import { readSmallFile, writeFileAtomic } from './files.js';
import type { TrustStore } from './trust.js';
import type { VerifierClient } from './verifier-client.js';
import { WakeableSleep } from './sleeper.js';

const genKeyPair = promisify(generateKeyPair);

/** Shortest wait between renewal retries while the node SVID is still valid. */
export const MIN_RENEW_RETRY_MS = 250;

/** Verifier answers after which the node SVID is useless and the agent must attest again. */
export const REATTEST_CODES: ReadonlySet<string> = new Set([
  'agent.evicted',
  'agent.unknown',
  'agent.stale_svid',
  'agent.svid_expired',
  'agent.bad_client_cert',
  'agent.no_client_cert',
  'agent.banned',
]);

export interface NodeSvid {
  agentId: string;
  chainDer: Buffer[];
  privateKey: KeyObject;
  notAfter: Date;
  /** When renewal is due (half of the lifetime as seen by the agent). */
  renewAt: Date;
}

export interface NodeIdentityOptions {
  trustDomain: string;
  dataDir: string;
  client: VerifierClient;
  trust: TrustStore;
  attestors: Map<string, NodeAttestorAgent>;
  logger: Logger;
  now: () => Date;
  backoff?: BackoffOptions;
}

/** Generate a P-256 key pair off the event loop. */
export async function newP256Key(): Promise<{ privateKey: KeyObject; publicKey: KeyObject }> {
  return genKeyPair('ec', { namedCurve: 'P-256' });
}

/** Renewal point: half the lifetime, counted from when the agent received the SVID (the CA backdates notBefore). */
export function halfLife(receivedAt: Date, notBefore: Date, notAfter: Date): Date {
  const start = Math.max(receivedAt.getTime(), notBefore.getTime());
  return new Date(start + Math.max(0, notAfter.getTime() - start) / 2);
}

export class NodeIdentity {
  private svid: NodeSvid | undefined;
  private key: KeyObject | undefined;
  private needsAttest = false;
  private freshKey = false;
  private closed = false;
  private running: Promise<void> | undefined;
  private readonly sleeper = new WakeableSleep();
  private readonly backoff: Backoff;
  private readonly listeners = new Set<(s: NodeSvid) => void>();
  private readyWaiters: ((s: NodeSvid) => void)[] = [];
  private readonly keyPath: string;
  private readonly svidPath: string;
  private lastError: SigilError | undefined;
  private gen = 0;
  /** Failures in a row since the node SVID expired without being replaced (0 = not in that state). */
  private lostFailures = 0;
  /** The bootstrap trustBundle has been added to the TLS trust since the last bundle from the verifier. */
  private widened = false;
  /** A renewal is in flight (refusals reported meanwhile wait for its outcome). */
  private renewing = false;
  /** The first refusal reported while the renewal was in flight. */
  private refusedDuringRenewal: SigilError | undefined;

  constructor(private readonly o: NodeIdentityOptions) {
    this.backoff = new Backoff(o.backoff);
    this.keyPath = join(o.dataDir, 'node-key.pem');
    this.svidPath = join(o.dataDir, 'node-svid.pem');
  }

  /** The current node SVID, if one is held and has not expired. */
  current(): NodeSvid | undefined {
    const s = this.svid;
    if (!s || s.notAfter.getTime() <= this.o.now().getTime()) return undefined;
    return s;
  }

  agentId(): string | undefined {
    return this.svid?.agentId;
  }

  /** The last failure of attestation or renewal (cleared on success). */
  error(): SigilError | undefined {
    return this.lastError;
  }

  /** Called after every successful attestation or renewal. */
  onIdentity(l: (s: NodeSvid) => void): () => void {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }

  /** Resolves with the first node SVID (immediately if one is held). */
  whenReady(): Promise<NodeSvid> {
    const s = this.current();
    if (s) return Promise.resolve(s);
    return new Promise((res) => this.readyWaiters.push(res));
  }

  /** Load persisted state, then run the attest/renew loop in the background. */
  start(): void {
    this.loadPersisted();
    this.running = this.loop();
  }

  /** Bumped whenever a new node SVID is adopted (attestation or renewal). */
  generation(): number {
    return this.gen;
  }

  /**
   * Another component learned the node SVID is no longer accepted: attest again now. `generation`
   * is the value of `generation()` when the failed request was made; a refusal of an SVID that has
   * since been renewed (a request that raced the renewal) is ignored.
   */
  invalidate(reason: SigilError, generation?: number): void {
    if (this.needsAttest) return;
    if (generation !== undefined && generation !== this.gen) {
      this.o.logger.debug({ code: reason.code }, 'refusal of a superseded node SVID ignored');
      return;
    }
    if (this.renewing) {
      // A renewal is in flight: the verifier may already have recorded its new SVID and so refuse
      // the one still in use as superseded. The renewal decides: adopted, the refusal was of the
      // old SVID and is dropped; failed, the refusal is acted on then (renew()).
      this.refusedDuringRenewal ??= reason;
      return;
    }
    this.o.logger.warn({ code: reason.code, reason: reason.message }, 'node SVID no longer accepted; attesting again');
    this.needsAttest = true;
    this.freshKey = true;
    this.backoff.reset();
    this.wake();
  }

  /**
   * The verifier's TLS certificate does not chain to our bundle: add the bootstrap bundle to the TLS
   * trust for the next attempts. The node SVID is kept (the verifier may only have rotated its CA or
   * let its certificate lapse); attestation follows only when the node SVID is gone or refused.
   */
  trustFailure(reason: SigilError): void {
    const first = !this.widened;
    this.widened = true;
    this.o.logger[first ? 'warn' : 'debug']({ code: reason.code, reason: reason.message }, 'verifier not trusted with the current bundle; adding the bootstrap trustBundle');
    try {
      // Persisted ∪ bootstrap (re-read each time, so the operator can drop in a new one): a stale
      // bootstrap file never makes things worse than the persisted bundle alone.
      const seen = new Set<string>();
      const union = [...this.o.trust.bundle().x509Authorities, ...this.o.trust.bootstrap().x509Authorities].filter((d) => {
        const k = d.toString('base64');
        if (seen.has(k)) return false;
        seen.add(k);
        return true;
      });
      this.o.client.setTrust(union);
    } catch (e) {
      this.o.logger.error(errorFields(e), 'bootstrap trustBundle unusable');
    }
    if (first) this.wake();
  }

  async close(): Promise<void> {
    this.closed = true;
    this.wake();
    await this.running;
  }

  private wake(): void {
    this.sleeper.wake();
  }

  private sleep(ms: number): Promise<void> {
    if (this.closed) return Promise.resolve();
    return this.sleeper.sleep(ms);
  }

  private loadPersisted(): void {
    const log = this.o.logger;
    try {
      const keyFile = readSmallFile(this.keyPath, 1 << 20);
      if (!keyFile) return;
      this.key = loadPrivateKeyPkcs8(this.keyPath);
      const pem = readSmallFile(this.svidPath);
      if (!pem) return;
      const chain = pemToDers(pem.toString('utf8'));
      const now = this.o.now();
      const s = this.checkNodeSvid(chain, this.key, this.o.trust.bundle(), undefined, now);
      this.adopt({ ...s, renewAt: halfLife(now, parseCertificate(chain[0] as Buffer).notBefore, s.notAfter) }, false);
      log.info({ agentId: s.agentId, expiresAt: s.notAfter.toISOString() }, 'using the persisted node SVID');
    } catch (e) {
      log.warn(errorFields(e), 'persisted node SVID not usable; the agent will attest');
    }
  }

  /** Verify a node SVID chain against `bundle`, and that its key is ours. */
  private checkNodeSvid(chain: Buffer[], key: KeyObject, bundle: SpiffeBundle, wantId: string | undefined, now: Date): Omit<NodeSvid, 'renewAt'> {
    const td = this.o.trustDomain;
    const v = verifyX509Svid(chain, (t) => (t === td ? bundle.x509Authorities : undefined), now);
    const id = v.spiffeId.toString();
    if (v.spiffeId.trustDomain !== td || !v.spiffeId.path.startsWith('/sigil/agent/')) {
      throw new SigilError('agent.bad_node_svid', `node SVID has SPIFFE ID ${id}, expected spiffe://${td}/sigil/agent/…`);
    }
    if (wantId !== undefined && id !== wantId) throw new SigilError('agent.bad_node_svid', `node SVID is for ${id}, expected ${wantId}`);
    if (!parseCertificate(v.leafDer).spki.equals(spkiDer(publicKeyOf(key)))) {
      throw new SigilError('agent.bad_node_svid', 'node SVID certificate does not carry the agent\'s node key');
    }
    return { agentId: id, chainDer: chain, privateKey: key, notAfter: v.notAfter };
  }

  private adopt(s: NodeSvid, persist: boolean): void {
    if (persist) writeFileAtomic(this.svidPath, certsToPem(s.chainDer), 0o644);
    const changedId = this.svid?.agentId !== s.agentId;
    this.svid = s;
    this.gen++;
    this.lastError = undefined;
    if (this.lostFailures > 0) this.o.logger.info({ agentId: s.agentId, failures: this.lostFailures }, 'node identity regained');
    this.lostFailures = 0;
    this.o.client.setIdentity({ chainDer: s.chainDer, privateKey: s.privateKey });
    if (changedId) this.o.logger.info({ agentId: s.agentId }, 'agent identity');
    const waiters = this.readyWaiters;
    this.readyWaiters = [];
    for (const w of waiters) w(s);
    for (const l of this.listeners) {
      try {
        l(s);
      } catch (e) {
        this.o.logger.error(errorFields(e), 'identity listener failed');
      }
    }
  }

  private async loop(): Promise<void> {
    while (!this.closed) {
      let delay: number;
      let attempted: 'attesting again' | 'renewing it' = 'attesting again';
      try {
        const now = this.o.now();
        const s = this.svid;
        if (!s || this.needsAttest || s.notAfter.getTime() <= now.getTime()) {
          await this.attest();
        } else if (now.getTime() >= s.renewAt.getTime()) {
          attempted = 'renewing it';
          await this.renew();
        }
        this.backoff.reset();
        this.lastError = undefined;
        const cur = this.svid as NodeSvid | undefined;
        delay = cur ? cur.renewAt.getTime() - this.o.now().getTime() : 0;
      } catch (e) {
        if (this.closed) break;
        const err = asSigilError(e, 'agent.attestation_failed', 'node attestation');
        delay = this.backoff.next();
        const held = this.svid;
        const remaining = held ? held.notAfter.getTime() - this.o.now().getTime() : 0;
        if (REATTEST_CODES.has(err.code)) {
          if (!this.needsAttest) this.freshKey = true;
          this.needsAttest = true;
        } else if (err.code === 'agent.verifier_untrusted') {
          this.trustFailure(err);
        }
        if (held && remaining > 0 && !this.needsAttest) {
          // Still valid: retry often enough to renew before it expires.
          delay = Math.min(delay, Math.max(MIN_RENEW_RETRY_MS, remaining / 4));
          this.lastError = err;
          const level = err.code === 'agent.verifier_unreachable' ? 'warn' : 'error';
          this.o.logger[level]({ code: err.code, reason: err.message, retryInMs: delay, failures: this.backoff.failures(), expiresAt: held.notAfter.toISOString() }, 'node SVID renewal failed');
        } else if (held && remaining <= 0) {
          // The identity is gone: say so plainly, with what stops the agent from getting it back.
          this.lostFailures++;
          this.lastError = new SigilError(
            'agent.node_svid_expired',
            `the node SVID of ${held.agentId} expired at ${held.notAfter.toISOString()} and ${attempted} failed (${err.code}: ${err.message}); ` +
              'the agent cannot renew workload SVIDs until it attests again — check the verifier and the node attestors (a used join token needs a new one in tokenFile)',
            { status: 503, cause: err },
          );
          this.o.logger.error({ code: this.lastError.code, cause: err.code, reason: this.lastError.message, retryInMs: delay, failures: this.lostFailures }, 'node SVID expired and the agent cannot attest again');
        } else {
          this.lastError = err;
          const level = err.code === 'agent.verifier_unreachable' ? 'warn' : 'error';
          this.o.logger[level]({ code: err.code, reason: err.message, retryInMs: delay, failures: this.backoff.failures() }, 'node attestation failed');
        }
      }
      await this.sleep(delay);
    }
  }

  private async nodeKey(): Promise<KeyObject> {
    if (this.key && !this.freshKey) return this.key;
    const k = await newP256Key();
    savePrivateKeyPkcs8(this.keyPath, k.privateKey);
    this.key = k.privateKey;
    this.freshKey = false;
    return k.privateKey;
  }

  /** One full attestation session with every configured node attestor. */
  private async attest(): Promise<void> {
    const log = this.o.logger;
    const key = await this.nodeKey();
    const csrSpki = spkiDer(publicKeyOf(key));
    const csr = createCsr({ privateKey: key });
    const hellos: Record<string, unknown> = {};
    for (const [name, a] of this.o.attestors) {
      try {
        hellos[name] = await a.hello();
      } catch (e) {
        throw asSigilError(e, 'agent.attestor_failed', `node attestor "${name}" hello`);
      }
    }
    const begin = await this.o.client.attestBegin(hellos, csr);
    const binding = sessionBinding(begin.nonce, csrSpki);
    const responses: Record<string, unknown> = {};
    for (const [name, a] of this.o.attestors) {
      try {
        responses[name] = await a.respond(begin.challenges[name], { nonce: begin.nonce, binding, csrSpki });
      } catch (e) {
        throw asSigilError(e, 'agent.attestor_failed', `node attestor "${name}" respond`);
      }
    }
    const fin = await this.o.client.attestFinish(begin.session, responses);
    const now = this.o.now();
    const bundle = SpiffeBundle.fromJwks(this.o.trustDomain, fin.bundle);
    const s = this.checkNodeSvid(fin.svid, key, bundle, fin.agentId, now);
    this.o.trust.update(fin.bundle);
    this.o.client.setTrust(this.o.trust.bundle().x509Authorities);
    this.widened = false;
    this.needsAttest = false;
    this.adopt({ ...s, renewAt: halfLife(now, parseCertificate(fin.svid[0] as Buffer).notBefore, s.notAfter) }, true);
    const status = (fin.result as { status?: unknown } | undefined)?.status;
    log.info({ agentId: s.agentId, attestors: [...this.o.attestors.keys()], status, expiresAt: s.notAfter.toISOString() }, 'node attested');
  }

  /** Renew the node SVID (same key) before it expires. */
  private async renew(): Promise<void> {
    this.renewing = true;
    this.refusedDuringRenewal = undefined;
    // Read through a function: invalidate() sets the field while renewOnce() is awaited.
    const refusal = (): SigilError | undefined => this.refusedDuringRenewal;
    try {
      await this.renewOnce();
    } catch (e) {
      const refused = refusal();
      if (refused && !this.needsAttest) {
        this.o.logger.warn({ code: refused.code, reason: refused.message }, 'node SVID no longer accepted; attesting again');
        this.needsAttest = true;
        this.freshKey = true;
      }
      throw e;
    } finally {
      this.renewing = false;
      const dropped = refusal();
      if (dropped && !this.needsAttest) {
        this.o.logger.debug({ code: dropped.code }, 'refusal of the node SVID replaced by the renewal in flight ignored');
      }
      this.refusedDuringRenewal = undefined;
    }
  }

  private async renewOnce(): Promise<void> {
    const cur = this.svid as NodeSvid;
    const r = await this.o.client.renew(createCsr({ privateKey: cur.privateKey }));
    const now = this.o.now();
    const bundle = SpiffeBundle.fromJwks(this.o.trustDomain, r.bundle);
    const s = this.checkNodeSvid(r.svid, cur.privateKey, bundle, cur.agentId, now);
    this.o.trust.update(r.bundle);
    this.o.client.setTrust(this.o.trust.bundle().x509Authorities);
    this.widened = false;
    this.adopt({ ...s, renewAt: halfLife(now, parseCertificate(r.svid[0] as Buffer).notBefore, s.notAfter) }, true);
    this.o.logger.info({ agentId: s.agentId, expiresAt: s.notAfter.toISOString() }, 'node SVID renewed');
  }
}
