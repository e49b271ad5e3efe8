/**
 * Node attestation sessions (DESIGN §3): one session per agent attempt, with a single-use 32-byte
 * nonce that expires after `attestation.sessionTtl` (default 30 s). All factors presented must pass;
 * `requireAttestors` must all be among them. Selectors of all factors are unioned; the agent ID
 * comes from the first attestor in the agent's hello.
 *
 * `POST /v1/attest` is unauthenticated, so opening sessions is limited (DESIGN §10, "Attestation
 * session limits"): per credential the hello presents, per source address, and in total, with the
 * last slots kept for hellos presenting credentials that, like their address, hold no open session yet.
 */
import { createHash, randomBytes, X509Certificate } from 'node:crypto';
import { isIPv4, isIPv6 } from 'node:net';
import type { Logger } from 'pino';
import { SigilError, errorMessage, errorFields } from '../errors.js';
import { decodeBase64 } from '../plugins/base64.js';
import { sessionBinding } from '../plugins/binding.js';
import { agentIdFor, checkAttestorStatus, checkSelectors } from '../plugins/result.js';
import type { AttestorResult, NodeAttestorVerifier, SessionInput } from '../plugins/types.js';
import { parseCsr } from '../spiffe/csr.js';
import type { DataStore, PluginStateKey } from '../store/types.js';
import type { CertificateAuthority } from './ca.js';
import type { VerifierMetrics } from './metrics.js';

/** Defaults of the `attestation` config block (README, DESIGN §10). */
export const SESSION_DEFAULTS = {
  sessionTtlSeconds: 30,
  maxSessions: 10_000,
  reservedSessions: 1_000,
  maxSessionsPerCredential: 4,
  maxSessionsPerAddress: 64,
  /** Bytes: `POST /v1/attest` bodies (the hello); later messages may be up to 1 MiB. */
  helloBodyLimit: 128 * 1024,
} as const;

export interface SessionLimits {
  /** How long a session (and its nonce) lives; an abandoned one frees its slot after this. */
  sessionTtlSeconds: number;
  /** Open sessions this verifier keeps at most. */
  maxSessions: number;
  /** The last this-many of `maxSessions` only go to hellos that present a credential and whose credentials and address hold no open session. */
  reservedSessions: number;
  /** Open sessions per credential a hello presents (`credentialKey` of each factor). */
  maxSessionsPerCredential: number;
  /** Open sessions per source address (IPv4 address, IPv6 /64). */
  maxSessionsPerAddress: number;
}

export interface AttestationResult {
  status: 'affirming' | 'warning' | 'contraindicated';
  submods: Record<string, { status: string; selectors: string[]; claims: Record<string, unknown> }>;
  nonce: string;
  issuedAt: string;
}

export interface AttestOptions {
  store: DataStore;
  ca: CertificateAuthority;
  trustDomain: string;
  attestors: Map<string, NodeAttestorVerifier>;
  requireAttestors: string[];
  agentSvidTtlSeconds: number;
  now: () => Date;
  logger: Logger;
  metrics: VerifierMetrics;
  /** Defaults: SESSION_DEFAULTS. */
  limits?: SessionLimits;
}

/** Who is asking for a session: the TCP peer of `POST /v1/attest`. */
export interface AttestPeer {
  address: string;
}

function b64(v: unknown, what: string, maxBytes: number): Buffer {
  return decodeBase64(v, what, { code: 'attest.bad_request', maxBytes });
}

/**
 * The limit bucket of a source address: an IPv4 address as is (IPv4-mapped IPv6 too), an IPv6
 * address by its /64 (one host usually holds a whole /64, so counting single addresses would let
 * it open sessions without end).
 */
export function addressBucket(address: string): string {
  const mapped = /^::ffff:(\d{1,3}(?:\.\d{1,3}){3})$/i.exec(address);
  if (mapped) return mapped[1] as string;
  if (isIPv4(address)) return address;
  const bare = address.split('%')[0] as string;
  if (!isIPv6(bare)) return address;
  let groups: string[];
  const [head = '', tail] = bare.split('::') as [string, string | undefined];
  const part = (x: string) => (x === '' ? [] : x.split(':'));
  if (tail === undefined) groups = part(head);
  else {
    const h = part(head);
    const t = part(tail);
    // An embedded IPv4 tail counts as two groups.
    const width = h.length + t.length + t.filter((g) => g.includes('.')).length;
    groups = [...h, ...Array<string>(Math.max(0, 8 - width)).fill('0'), ...t];
  }
  return `${groups
    .slice(0, 4)
    .map((g) => (g.includes('.') ? g : parseInt(g, 16).toString(16)))
    .join(':')}::/64`;
}

/** Credential key of the built-in join_token attestor: SHA-256 of the token in its hello. */
function joinTokenCredential(hello: unknown): string | undefined {
  const t = (hello as { token?: unknown } | null)?.token;
  return typeof t === 'string' ? createHash('sha256').update(t).digest('hex') : undefined;
}

interface Ticket {
  credentials: string[];
  address: string;
  expiresAt: number;
  session?: string;
}

/**
 * This verifier's open sessions, counted per credential, per address and in total. A slot is taken
 * synchronously before `begin` runs (so concurrent hellos cannot all pass the same check), given
 * back when `begin` fails or the session is taken, and otherwise expires with the session.
 * Insertion order is expiry order (every ticket lives `sessionTtl`), so expiring is a walk from the front.
 * Times are elapsed time on the ledger's own clock, which follows the verifier clock forward and
 * ignores its steps back: with wall-clock expiry times, a step back would put the tickets opened
 * before it in the future and stop the walk there, so every slot opened after it would be held for
 * as long as the step (test/attacks/session-ledger-clock-step.test.ts).
 */
export class SessionLedger {
  private readonly tickets = new Set<Ticket>();
  private readonly bySession = new Map<string, Ticket>();
  private readonly perCredential = new Map<string, number>();
  private readonly perAddress = new Map<string, number>();
  /** The verifier clock's last reading and the ledger's elapsed time (ms) up to it. */
  private lastClock: number | undefined;
  private elapsed = 0;

  constructor(private readonly limits: SessionLimits) {}

  get open(): number {
    return this.tickets.size;
  }

  /** Elapsed time for verifier clock reading `now`: forward moves count, steps back do not. */
  private tick(now: number): number {
    if (this.lastClock !== undefined && now > this.lastClock) this.elapsed += now - this.lastClock;
    this.lastClock = now;
    return this.elapsed;
  }

  private expire(now: number): void {
    for (const t of this.tickets) {
      if (t.expiresAt > now) break;
      this.release(t);
    }
  }

  /** Take a slot or throw the SigilError naming the limit that is hit. */
  admit(credentials: string[], address: string, clock: number): Ticket {
    const now = this.tick(clock);
    this.expire(now);
    const l = this.limits;
    for (const c of credentials) {
      if ((this.perCredential.get(c) ?? 0) >= l.maxSessionsPerCredential) {
        throw new SigilError(
          'attest.credential_busy',
          `this credential already has ${l.maxSessionsPerCredential} attestation sessions open (attestation.maxSessionsPerCredential); finish them or wait ${l.sessionTtlSeconds} s`,
          { status: 429 },
        );
      }
    }
    const fromAddress = this.perAddress.get(address) ?? 0;
    if (fromAddress >= l.maxSessionsPerAddress) {
      throw new SigilError(
        'attest.address_busy',
        `this address already has ${l.maxSessionsPerAddress} attestation sessions open (attestation.maxSessionsPerAddress); retry shortly`,
        { status: 429 },
      );
    }
    if (this.tickets.size >= l.maxSessions) {
      throw new SigilError('attest.busy', `all ${l.maxSessions} attestation sessions are in use (attestation.maxSessions); retry shortly`, { status: 503 });
    }
    // The reserve goes to a hello that presents a credential (a hello without one — tdx, aws_nitro,
    // sev_snp — costs an attacker only an address) whose credentials and address hold no session.
    if (this.tickets.size >= l.maxSessions - l.reservedSessions && (fromAddress > 0 || credentials.length === 0 || credentials.some((c) => this.perCredential.has(c)))) {
      throw new SigilError(
        'attest.busy_reserved',
        `only the ${l.reservedSessions} reserved attestation sessions are left (attestation.reservedSessions), and they go to hellos presenting a credential (TPM EK, join token) from credentials and addresses with no session open; retry shortly`,
        { status: 503 },
      );
    }
    const t: Ticket = { credentials, address, expiresAt: now + l.sessionTtlSeconds * 1000 };
    this.tickets.add(t);
    for (const c of credentials) this.perCredential.set(c, (this.perCredential.get(c) ?? 0) + 1);
    this.perAddress.set(address, fromAddress + 1);
    return t;
  }

  /** The slot now holds session `id` (given back when that session is taken). */
  bind(t: Ticket, id: string): void {
    if (!this.tickets.has(t)) return;
    t.session = id;
    this.bySession.set(id, t);
  }

  /** Give back the slot of session `id` (no-op if it expired or another verifier opened it). */
  releaseSession(id: string): void {
    const t = this.bySession.get(id);
    if (t) this.release(t);
  }

  release(t: Ticket): void {
    if (!this.tickets.delete(t)) return;
    if (t.session !== undefined) this.bySession.delete(t.session);
    for (const c of t.credentials) decrement(this.perCredential, c);
    decrement(this.perAddress, t.address);
  }
}

function decrement(m: Map<string, number>, k: string): void {
  const n = (m.get(k) ?? 0) - 1;
  if (n > 0) m.set(k, n);
  else m.delete(k);
}

/**
 * Sessions live in the datastore (not in memory), so with several verifiers behind a load balancer
 * the second call may reach another verifier; taking a session deletes it atomically (single use).
 */
export class AttestationService {
  private lastSweep = 0;
  private readonly limits: SessionLimits;
  private readonly ledger: SessionLedger;

  constructor(private readonly o: AttestOptions) {
    this.limits = o.limits ?? SESSION_DEFAULTS;
    this.ledger = new SessionLedger(this.limits);
  }

  /** Open sessions this verifier holds slots for. */
  get openSessions(): number {
    return this.ledger.open;
  }

  /** Delete expired sessions from the datastore at most once a second. */
  private async sweep(now: number): Promise<void> {
    if (now - this.lastSweep >= 1000) {
      this.lastSweep = now;
      await this.o.store.sweepSessions(new Date(now));
    }
  }

  /**
   * The credentials a hello presents, as `<attestor>\0<key>` digests: the attestor's own
   * `credentialKey`, or for the built-in join_token a hash of its token. Unverified here; `begin`
   * then verifies what the key was derived from, and a session only stays open if it passes.
   */
  private credentialsOf(attestors: Record<string, unknown>): string[] {
    const out: string[] = [];
    for (const [n, hello] of Object.entries(attestors)) {
      const a = this.o.attestors.get(n) as NodeAttestorVerifier;
      let key: unknown;
      try {
        key = a.credentialKey ? a.credentialKey(hello) : n === 'join_token' ? joinTokenCredential(hello) : undefined;
      } catch (e) {
        throw prefixed(e, n);
      }
      if (typeof key === 'string' && key.length > 0) out.push(createHash('sha256').update(`${n}\0${key}`).digest('base64'));
    }
    return out;
  }

  async begin(
    body: { attestors: Record<string, unknown>; csr: string },
    peer: AttestPeer = { address: 'unknown' },
  ): Promise<{ session: string; nonce: string; challenges: Record<string, unknown> }> {
    const now = this.o.now();
    const names = Object.keys(body.attestors);
    if (names.length === 0) throw new SigilError('attest.no_attestors', 'the hello names no node attestor');
    for (const n of names) {
      if (!this.o.attestors.has(n)) {
        throw new SigilError('attest.unknown_attestor', `node attestor "${n}" is not enabled on this verifier (enabled: ${[...this.o.attestors.keys()].join(', ')})`);
      }
    }
    for (const r of this.o.requireAttestors) {
      if (!names.includes(r)) throw new SigilError('attest.missing_attestor', `this verifier requires the "${r}" attestor; the agent presented ${names.join(', ')}`, { status: 403 });
    }
    // Limits first: a refused hello costs no CSR check and no plugin work.
    const ticket = this.ledger.admit(this.credentialsOf(body.attestors), addressBucket(peer.address), now.getTime());
    try {
      const csr = parseCsr(b64(body.csr, 'csr', 16 * 1024));
      const opened = await this.open(names, body.attestors, csr.spki, now);
      this.ledger.bind(ticket, opened.session);
      return opened;
    } catch (e) {
      this.ledger.release(ticket);
      throw e;
    } finally {
      this.o.metrics.attestSessions.set(this.ledger.open);
    }
  }

  private async open(
    names: string[],
    hellos: Record<string, unknown>,
    csrSpki: Buffer,
    now: Date,
  ): Promise<{ session: string; nonce: string; challenges: Record<string, unknown> }> {
    await this.sweep(now.getTime());
    const nonce = randomBytes(32);
    const input: SessionInput = { nonce, binding: sessionBinding(nonce, csrSpki), csrSpki, now };
    const states: Record<string, unknown> = {};
    const challenges: Record<string, unknown> = {};
    await Promise.all(
      names.map(async (n) => {
        try {
          const { challenge, state } = await (this.o.attestors.get(n) as NodeAttestorVerifier).begin(hellos[n], input);
          states[n] = state;
          challenges[n] = challenge;
        } catch (e) {
          this.o.metrics.attestations.inc({ attestor: n, result: 'rejected' });
          throw prefixed(e, n);
        }
      }),
    );
    const id = randomBytes(16).toString('hex');
    await this.o.store.putSession({
      id,
      nonce: nonce.toString('base64'),
      csrSpki: csrSpki.toString('base64'),
      attestors: names,
      states,
      expiresAt: new Date(now.getTime() + this.limits.sessionTtlSeconds * 1000).toISOString(),
    });
    return { session: id, nonce: nonce.toString('base64'), challenges };
  }

  async finish(sessionId: string, body: { responses: Record<string, unknown> }): Promise<{ agentId: string; svid: string[]; bundle: unknown; result: AttestationResult }> {
    const now = this.o.now();
    // Single use: the session (and its nonce) is gone whatever the outcome.
    const stored = await this.o.store.takeSession(sessionId);
    this.ledger.releaseSession(sessionId);
    this.o.metrics.attestSessions.set(this.ledger.open);
    if (!stored) throw new SigilError('attest.session_unknown', 'attestation session is unknown or was already used', { status: 401 });
    const nonce = Buffer.from(stored.nonce, 'base64');
    const csrSpki = Buffer.from(stored.csrSpki, 'base64');
    const s = { attestors: stored.attestors, nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), states: stored.states };
    if (Date.parse(stored.expiresAt) <= now.getTime()) throw new SigilError('attest.session_expired', `attestation session expired (sessions live ${this.limits.sessionTtlSeconds} s)`, { status: 401 });
    const given = Object.keys(body.responses);
    for (const n of given) {
      if (!s.attestors.includes(n)) throw new SigilError('attest.unexpected_response', `response for "${n}", which was not in the hello`);
    }
    const input: SessionInput = { nonce: s.nonce, binding: s.binding, csrSpki: s.csrSpki, now };
    const results = new Map<string, AttestorResult>();
    await Promise.all(
      s.attestors.map(async (n) => {
        if (!(n in body.responses)) throw new SigilError('attest.missing_response', `no response for attestor "${n}"`);
        try {
          const r = await (this.o.attestors.get(n) as NodeAttestorVerifier).finish(body.responses[n], s.states[n], input);
          checkSelectors(n, r);
          checkAttestorStatus(r);
          results.set(n, r);
          this.o.metrics.attestations.inc({ attestor: n, result: 'accepted' });
        } catch (e) {
          this.o.metrics.attestations.inc({ attestor: n, result: 'rejected' });
          throw prefixed(e, n);
        }
      }),
    );
    // The agent ID comes from the first factor, whose order the agent chooses; so a ban on the ID any
    // presented factor would give must hold too, or a banned node could re-attest by reordering factors.
    const factorIds: string[] = [];
    for (const [i, n] of s.attestors.entries()) {
      try {
        factorIds.push(agentIdFor(this.o.trustDomain, n, (results.get(n) as AttestorResult).agentIdSuffix).toString());
      } catch (e) {
        if (i > 0) continue; // only the first factor names the agent
        throw e;
      }
    }
    const agentId = factorIds[0] as string;
    for (const id of factorIds) {
      const existing = await this.o.store.getAgent(id);
      if (existing?.banned) throw banned(id);
    }
    // Every factor passed: now make their side effects durable (each once; a failure here still fails
    // the session). Commits that use up a one-time resource (`consumesOnCommit`, e.g. a join token)
    // run after all the others, so a commit that can still fail — a compare-and-set losing a race,
    // as the TPM counters can — fails the session before anything single-use is spent.
    const commitOrder = [
      ...s.attestors.filter((n) => this.o.attestors.get(n)?.consumesOnCommit !== true),
      ...s.attestors.filter((n) => this.o.attestors.get(n)?.consumesOnCommit === true),
    ];
    for (const n of commitOrder) {
      const a = this.o.attestors.get(n) as NodeAttestorVerifier;
      if (a.commit) {
        try {
          await a.commit(s.states[n], input);
        } catch (e) {
          throw prefixed(e, n);
        }
      }
    }
    const selectors = [...new Set([...results.values()].flatMap((r) => r.selectors))].sort();
    const { chain, notAfter } = this.o.ca.signX509Svid(s.csrSpki, agentId, this.o.agentSvidTtlSeconds);
    const serial = new X509Certificate(chain[0] as Buffer).serialNumber;
    // A ban (`agent evict --ban`) can land after the check above, e.g. while the factors commit:
    // the write is conditional and never touches a banned record, so that ban stands and the
    // session fails as if the check had seen it (the signed SVID is never handed out).
    const written = await this.o.store.upsertAgent({
      id: agentId,
      attestors: s.attestors,
      selectors,
      serial,
      svidExpiresAt: notAfter.toISOString(),
      attestedAt: now.toISOString(),
      banned: false,
      factorIds,
    });
    if (!written) throw banned(agentId);
    // The other factors' IDs get no record of their own here, so look at them again: a ban on one
    // of them that committed before this point fails the session too. One after it is a ban of a
    // node that had already attested, like any later ban: the record holds every factor ID
    // (factorIds), and every agent call and renewal refuses the agent while any of them is banned.
    // On this failure the record just written names an SVID that is never handed out, so the
    // node's previous SVID stops working as well.
    for (const id of factorIds) {
      if (id !== agentId && (await this.o.store.getAgent(id))?.banned) throw banned(id);
    }
    this.o.metrics.svids.inc({ type: 'node' });
    const submods: AttestationResult['submods'] = {};
    let status: AttestationResult['status'] = 'affirming';
    for (const [n, r] of results) {
      const st = r.status ?? 'affirming';
      if (st === 'warning') status = 'warning';
      submods[n] = { status: st, selectors: r.selectors, claims: r.claims };
    }
    this.o.logger.info({ agentId, attestors: s.attestors, selectors: selectors.length }, 'agent attested');
    return {
      agentId,
      svid: chain.map((c) => c.toString('base64')),
      bundle: this.o.ca.bundle().toJwks(),
      result: { status, submods, nonce: s.nonce.toString('base64'), issuedAt: now.toISOString() },
    };
  }

  /**
   * The plugin state that belongs to the node with this agent ID (`spiffe://<td>/sigil/agent/<attestor>/<suffix>`),
   * as the attestor names it (`stateKeysForAgent`); empty for other IDs or attestors not enabled here.
   * Eviction deletes it together with the agent record (DataStore.evictAgent).
   */
  pluginStateOf(agentId: string): PluginStateKey[] {
    const prefix = `spiffe://${this.o.trustDomain}/sigil/agent/`;
    if (!agentId.startsWith(prefix)) return [];
    const rest = agentId.slice(prefix.length);
    const slash = rest.indexOf('/');
    if (slash <= 0) return [];
    const plugin = rest.slice(0, slash);
    const a = this.o.attestors.get(plugin);
    if (!a?.stateKeysForAgent) return [];
    let keys: unknown;
    try {
      keys = a.stateKeysForAgent(rest.slice(slash + 1));
    } catch (e) {
      this.o.logger.error({ ...errorFields(e), plugin, agentId }, 'stateKeysForAgent failed; no plugin state is deleted for this agent ID');
      return [];
    }
    if (!Array.isArray(keys)) return [];
    return keys.filter((k): k is string => typeof k === 'string').map((key) => ({ plugin, key }));
  }
}

function banned(agentId: string): SigilError {
  return new SigilError('attest.agent_banned', `agent ${agentId} is banned; an operator must remove the ban first`, { status: 403 });
}

function prefixed(e: unknown, attestor: string): SigilError {
  if (e instanceof SigilError) {
    return new SigilError(e.code, `${attestor}: ${e.message}`, { status: e.status === 400 ? 401 : e.status, details: e.details, cause: e });
  }
  return new SigilError('attest.attestor_failed', `${attestor}: ${errorMessage(e)}`, { status: 500, cause: e });
}
