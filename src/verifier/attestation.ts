/**
 * Node attestation sessions (DESIGN §3): one session per agent attempt, with a single-use 32-byte
 * nonce that expires after 60 s. All factors presented must pass; `requireAttestors` must all be
 * among them. Selectors of all factors are unioned; the agent ID comes from the first attestor in
 * the agent's hello.
 */
import { randomBytes, X509Certificate } from 'node:crypto';
import type { Logger } from 'pino';
import { SigilError } from '../errors.js';
import { sessionBinding } from '../plugins/binding.js';
import type { AttestorResult, NodeAttestorVerifier, SessionInput } from '../plugins/types.js';
import { parseCsr } from '../spiffe/csr.js';
import { SpiffeId } from '../spiffe/id.js';
import type { DataStore, PluginStateKey } from '../store/types.js';
import type { CertificateAuthority } from './ca.js';
import type { VerifierMetrics } from './metrics.js';

export const SESSION_TTL_MS = 60_000;
export const MAX_SESSIONS = 10_000;

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
}

function b64(v: unknown, what: string, maxBytes: number): Buffer {
  if (typeof v !== 'string' || !/^[A-Za-z0-9+/]*={0,2}$/.test(v)) throw new SigilError('attest.bad_request', `${what} must be standard base64`);
  const b = Buffer.from(v, 'base64');
  if (b.length === 0 || b.length > maxBytes) throw new SigilError('attest.bad_request', `${what} must be 1–${maxBytes} bytes`);
  return b;
}

/**
 * Sessions live in the datastore (not in memory), so with several verifiers behind a load balancer
 * the second call may reach another verifier; taking a session deletes it atomically (single use).
 */
export class AttestationService {
  private lastSweep = 0;
  private openCount = 0;

  constructor(private readonly o: AttestOptions) {}

  /** Delete expired sessions at most once a second; returns how many are open. */
  private async sweep(now: number): Promise<number> {
    if (now - this.lastSweep >= 1000 || this.openCount >= MAX_SESSIONS) {
      this.lastSweep = now;
      this.openCount = await this.o.store.sweepSessions(new Date(now));
    }
    return this.openCount;
  }

  async begin(body: { attestors: Record<string, unknown>; csr: string }): Promise<{ session: string; nonce: string; challenges: Record<string, unknown> }> {
    const now = this.o.now();
    if ((await this.sweep(now.getTime())) >= MAX_SESSIONS) throw new SigilError('attest.busy', 'too many attestation sessions in progress; retry shortly', { status: 503 });
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
    const csr = parseCsr(b64(body.csr, 'csr', 16 * 1024));
    const nonce = randomBytes(32);
    const binding = sessionBinding(nonce, csr.spki);
    const input: SessionInput = { nonce, binding, csrSpki: csr.spki, now };
    const states: Record<string, unknown> = {};
    const challenges: Record<string, unknown> = {};
    await Promise.all(
      names.map(async (n) => {
        try {
          const { challenge, state } = await (this.o.attestors.get(n) as NodeAttestorVerifier).begin(body.attestors[n], input);
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
      csrSpki: csr.spki.toString('base64'),
      attestors: names,
      states,
      expiresAt: new Date(now.getTime() + SESSION_TTL_MS).toISOString(),
    });
    this.openCount++;
    return { session: id, nonce: nonce.toString('base64'), challenges };
  }

  async finish(sessionId: string, body: { responses: Record<string, unknown> }): Promise<{ agentId: string; svid: string[]; bundle: unknown; result: AttestationResult }> {
    const now = this.o.now();
    // Single use: the session (and its nonce) is gone whatever the outcome.
    const stored = await this.o.store.takeSession(sessionId);
    if (!stored) throw new SigilError('attest.session_unknown', 'attestation session is unknown or was already used', { status: 401 });
    const nonce = Buffer.from(stored.nonce, 'base64');
    const csrSpki = Buffer.from(stored.csrSpki, 'base64');
    const s = { attestors: stored.attestors, nonce, csrSpki, binding: sessionBinding(nonce, csrSpki), states: stored.states };
    if (Date.parse(stored.expiresAt) <= now.getTime()) throw new SigilError('attest.session_expired', 'attestation session expired (sessions live 60 s)', { status: 401 });
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
          for (const sel of r.selectors) {
            if (!sel.startsWith(`${n}:`)) throw new SigilError('attest.bad_selector', `attestor "${n}" produced selector "${sel}" outside its own type`, { status: 500 });
          }
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
        factorIds.push(SpiffeId.fromPath(this.o.trustDomain, `/sigil/agent/${n}/${(results.get(n) as AttestorResult).agentIdSuffix}`).toString());
      } catch (e) {
        if (i > 0) continue; // only the first factor names the agent
        throw new SigilError('attest.bad_agent_id', `attestor "${n}" produced an agent ID suffix that is not a valid SPIFFE path: ${(e as Error).message}`, { status: 500 });
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
      this.o.logger.error({ err: e, plugin, agentId }, 'stateKeysForAgent failed; no plugin state is deleted for this agent ID');
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
  return new SigilError('attest.attestor_failed', `${attestor}: ${e instanceof Error ? e.message : String(e)}`, { status: 500, cause: e });
}
