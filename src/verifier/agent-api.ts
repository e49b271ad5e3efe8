/** Agent-facing HTTPS routes (DESIGN §3, docs/api.md). */
import { X509Certificate, createHash } from 'node:crypto';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { TLSSocket } from 'node:tls';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { SigilError, errorMessage } from '../errors.js';
import type { SpiffeBundle } from '../spiffe/bundle.js';
import { parseCsr } from '../spiffe/csr.js';
import type { AgentRecord } from '../store/types.js';
import { AgentRecordCache } from './agent-records.js';
import { AuthorizedSetCache } from './authorized-cache.js';
import { b64String } from './http-common.js';
import type { VerifierCore } from './core.js';
import type { FederationService } from '../federation/service.js';

/**
 * What a TLS connection's client certificate says: the agent ID, serial and validity (ms since the
 * epoch), or why it is refused.
 */
type PeerIdentity = { id: string; serial: string; notBefore: number; notAfter: number } | SigilError;

/**
 * The peer identity of each TLS connection, read from its certificate once: a keep-alive agent
 * connection sends a sync every few seconds over the same session, and parsing the certificate's
 * SANs every time was a large part of a 304. The first read turns TLS renegotiation off for that
 * connection (TLS 1.2 could otherwise present another certificate later; TLS 1.3 has none), so the
 * certificate cannot change under the cached answer. Entries go away with their socket.
 */
const peerIdentities = new WeakMap<TLSSocket, PeerIdentity>();

function readPeerIdentity(sock: TLSSocket): PeerIdentity {
  const cert = sock.getPeerX509Certificate();
  if (!cert) return new SigilError('agent.no_client_cert', 'this call needs the agent\'s node SVID as TLS client certificate', { status: 401 });
  if (!sock.authorized) {
    return new SigilError('agent.bad_client_cert', `client certificate not trusted: ${String(sock.authorizationError ?? 'unknown reason')}`, { status: 401 });
  }
  const uris = (cert.subjectAltName ?? '').split(', ').filter((s) => s.startsWith('URI:'));
  if (uris.length !== 1) return new SigilError('agent.bad_client_cert', 'client certificate must carry exactly one URI SAN', { status: 401 });
  const notBefore = Date.parse(cert.validFrom);
  const notAfter = Date.parse(cert.validTo);
  if (Number.isNaN(notBefore) || Number.isNaN(notAfter)) return new SigilError('agent.bad_client_cert', 'client certificate has an unreadable validity period', { status: 401 });
  return { id: (uris[0] as string).slice(4), serial: cert.serialNumber, notBefore, notAfter };
}

function peerAgentId(req: FastifyRequest): { id: string; serial: string; notBefore: number; notAfter: number } {
  const sock = req.raw.socket as TLSSocket;
  if (typeof sock.getPeerX509Certificate !== 'function') throw new SigilError('agent.no_client_cert', 'this call needs TLS with a client certificate', { status: 401 });
  let p = peerIdentities.get(sock);
  if (p === undefined) {
    sock.disableRenegotiation();
    p = readPeerIdentity(sock);
    peerIdentities.set(sock, p);
  }
  // A fresh error each time: the cached one carries the first request's stack.
  if (p instanceof SigilError) throw new SigilError(p.code, p.message, { status: p.status });
  return p;
}

function unknownAgent(id: string): SigilError {
  return new SigilError('agent.unknown', `${id} is not an attested agent (evicted or never attested); attest again`, { status: 401 });
}

function staleSvid(): SigilError {
  return new SigilError('agent.stale_svid', 'this node SVID was superseded by a newer one; use the current SVID or attest again', { status: 401 });
}

/**
 * The ban that keeps this agent out: of its own ID or of any other factor it attested with. `fresh`:
 * the factors' records are read from the store itself, not from what is kept.
 */
async function banOf(records: AgentRecordReader, agent: AgentRecord, fresh = false): Promise<SigilError | undefined> {
  if (agent.banned) return new SigilError('agent.banned', `${agent.id} is banned`, { status: 403 });
  for (const fid of agent.factorIds) {
    if (fid === agent.id) continue;
    const f = fresh && records.fresh ? records.fresh(fid) : records.get(fid);
    if ((f instanceof Promise ? await f : f)?.banned) {
      return new SigilError('agent.banned', `${agent.id} attested with the factor ${fid}, which is banned`, { status: 403 });
    }
  }
  return undefined;
}

/**
 * onRequest hook of the agent-mTLS routes: a caller without a trusted client certificate is refused
 * before its body is read or parsed, so the unauthenticated surface of these routes costs no parsing.
 */
async function trustedClientFirst(req: FastifyRequest): Promise<void> {
  peerAgentId(req);
}

const SESSION_ID = /^[0-9a-f]{32}$/;

/**
 * onRequest hook of `POST /v1/attest/:session`: a session that is not open (on any verifier
 * sharing the store) is refused before the body is read or parsed, so the unauthenticated second
 * message costs one indexed lookup, not a megabyte of JSON.parse.
 */
function openSessionFirst(core: VerifierCore) {
  return async (req: FastifyRequest<{ Params: { session: string } }>): Promise<void> => {
    const id = req.params.session;
    if (typeof id !== 'string' || !SESSION_ID.test(id)) throw new SigilError('http.bad_request', 'params/session must match pattern "^[0-9a-f]{32}$"', { status: 400 });
    if (!(await core.store.hasSession(id, core.now()))) throw new SigilError('attest.session_unknown', 'attestation session is unknown, expired or was already used', { status: 401 });
  };
}

/**
 * A batch of CSRs lets the event loop run other requests between every this many CSRs checked or
 * signed (a P-384 CSR check costs some 1–4 ms here; 500 at once held the loop for seconds).
 */
const CSR_YIELD_EVERY = 8;

/** Requests whose connection is closed after their answer (`Connection: close`, added in onSend). */
const closeAfterAnswer = new WeakSet<FastifyRequest>();

/**
 * The node SVID's validity at `now` (ms). TLS checks it once, at the handshake; a kept-alive
 * connection outlives that check (a long-poll every 20 s keeps one open indefinitely), so every
 * request checks it again — otherwise an expired node SVID would keep syncing, minting workload
 * SVIDs and even renew itself on its old connection.
 */
function svidValidity(peer: { notBefore: number; notAfter: number }, now: number): SigilError | undefined {
  if (now > peer.notAfter) {
    return new SigilError('agent.svid_expired', `the node SVID of this connection expired at ${new Date(peer.notAfter).toISOString()}; attest again (and open a new connection)`, { status: 401 });
  }
  if (now < peer.notBefore) {
    return new SigilError('agent.svid_expired', `the node SVID of this connection is not valid before ${new Date(peer.notBefore).toISOString()}`, { status: 401 });
  }
  return undefined;
}

/** Where agent records are read: the store itself, or the routes' AgentRecordCache. */
interface AgentRecordReader {
  get(id: string): AgentRecord | undefined | Promise<AgentRecord | undefined>;
  /** Read from the store itself (AgentRecordCache.fresh): what a refusal is confirmed with. */
  fresh?(id: string): Promise<AgentRecord | undefined>;
}

export async function requireAgent(core: VerifierCore, records: AgentRecordReader, req: FastifyRequest): Promise<AgentRecord> {
  const peer = peerAgentId(req);
  const { id, serial } = peer;
  const expired = svidValidity(peer, core.now().getTime());
  if (expired) {
    // Nothing on this connection can succeed any more: close it once this answer is out.
    closeAfterAnswer.add(req);
    throw expired;
  }
  const got = records.get(id);
  let agent = got instanceof Promise ? await got : got;
  let refusal = await refusalOf(records, id, serial, agent, false);
  // Never refused on kept copies alone: the agent may have attested or renewed through another
  // verifier a moment ago, its notification not here yet (agent-records.ts). Accepting may rest on them.
  if (refusal && records.fresh) {
    agent = await records.fresh(id);
    refusal = await refusalOf(records, id, serial, agent, true);
  }
  if (refusal) throw refusal;
  return agent as AgentRecord;
}

/** Why an agent call with this ID and serial is refused, given the agent's record; undefined: it is not. */
async function refusalOf(records: AgentRecordReader, id: string, serial: string, agent: AgentRecord | undefined, fresh: boolean): Promise<SigilError | undefined> {
  if (!agent) return unknownAgent(id);
  const ban = await banOf(records, agent, fresh);
  if (ban) return ban;
  if (agent.serial !== serial) return staleSvid();
  return undefined;
}

/**
 * Why a conditional renewal wrote nothing, from the agent record as it is now: gone (agent.unknown),
 * banned itself or through another factor (agent.banned, 403: attesting again is refused too), or
 * holding another SVID by now (agent.stale_svid). If the record shows none of these any more (what
 * stopped the write was undone in between), the renewal can simply be retried (agent.renewal_conflict).
 */
async function renewalRefusal(core: VerifierCore, agent: AgentRecord): Promise<SigilError> {
  const now = await core.store.getAgent(agent.id);
  if (!now) return new SigilError('agent.unknown', `${agent.id} was evicted while this renewal ran; attest again`, { status: 401 });
  const ban = await banOf({ get: (id) => core.store.getAgent(id) }, now);
  if (ban) return new SigilError(ban.code, `${ban.message} (banned while this renewal ran)`, { status: ban.status });
  if (now.serial !== agent.serial) {
    return new SigilError('agent.stale_svid', `${agent.id} was renewed or attested again by another request while this renewal ran; this node SVID is no longer accepted: use the current SVID or attest again`, { status: 401 });
  }
  return new SigilError('agent.renewal_conflict', `the record of ${agent.id} changed while this renewal ran; retry the renewal`, { status: 409 });
}

const csrBody = {
  type: 'object',
  additionalProperties: false,
  required: ['csr'],
  properties: { csr: b64String },
} as const;

export function registerAgentRoutes(app: FastifyInstance, core: VerifierCore, federation?: FederationService): void {
  /** Agents with an X.509-SVID batch being checked or signed (one at a time each). */
  const x509InFlight = new Set<string>();
  // The callback form: no promise per answer on the sync path.
  app.addHook('onSend', (req, reply, payload, done) => {
    if (closeAfterAnswer.has(req)) reply.header('connection', 'close');
    done(null, payload);
  });
  // Agent records, kept while the store reports every write of them (agent-records.ts). Made before
  // the authorized-set cache so that a notification drops a kept record before that cache re-checks
  // the held long-polls it touches.
  const reads = { memory: core.metrics.agentRecordReads.labels('memory'), store: core.metrics.agentRecordReads.labels('store') };
  const records = new AgentRecordCache(core.store, undefined, { onRead: (source) => reads[source].inc() });
  // Each agent's authorized set, kept current by the store's change feeds (authorized-cache.ts),
  // which also answer the held long-polls of agents evicted or banned through any verifier.
  const sets = new AuthorizedSetCache(
    core.store,
    core.config.trustDomain,
    core.now,
    core.config.longPoll,
    (detail, ignored) => core.logger.warn({ detail, ignored }, 'datastore: ignored unreadable agent notifications'),
    { feedBehind: (detail, times) => core.logger.warn({ detail, times }, 'datastore: entry change notifications lost writes') },
  );
  // Held long-polls are answered (unchanged) before the listener waits for open requests to end.
  app.addHook('preClose', async () => {
    sets.close();
    records.close();
  });
  // The bundle changes when the CA journals do (rotation, a peer verifier's CA): its JSON and ETag
  // are made once per bundle object, and an agent that holds it gets a 304. The ETag also rides on
  // every answer to GET /v1/entries/authorized (header `sigil-bundle-etag`), so an agent learns that
  // the bundle changed from the sync it makes anyway and fetches the bundle only then: one request
  // per unchanged sync instead of two (docs/api.md).
  const bundleAnswers = new WeakMap<SpiffeBundle, { etag: string; body: string }>();
  const bundleAnswer = (): { etag: string; body: string } => {
    const b = core.ca.bundle();
    let a = bundleAnswers.get(b);
    if (a === undefined) {
      const body = JSON.stringify(b.toJwks());
      a = { etag: `"${createHash('sha256').update(body).digest('base64url').slice(0, 22)}"`, body };
      bundleAnswers.set(b, a);
    }
    return a;
  };
  app.post<{ Body: { attestors: Record<string, unknown>; csr: string } }>(
    '/v1/attest',
    {
      // The unauthenticated first message: a much lower body limit than the rest (DESIGN §10).
      bodyLimit: core.config.attestation.helloBodyLimit,
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['attestors', 'csr'],
          properties: { attestors: { type: 'object', minProperties: 1, maxProperties: 8 }, csr: b64String },
        },
      },
    },
    async (req) => core.attestation.begin(req.body, { address: req.socket.remoteAddress ?? 'unknown' }),
  );

  app.post<{ Params: { session: string }; Body: { responses: Record<string, unknown> } }>(
    '/v1/attest/:session',
    {
      onRequest: openSessionFirst(core),
      schema: {
        params: { type: 'object', properties: { session: { type: 'string', pattern: '^[0-9a-f]{32}$' } }, required: ['session'] },
        body: { type: 'object', additionalProperties: false, required: ['responses'], properties: { responses: { type: 'object', maxProperties: 8 } } },
      },
    },
    async (req) => core.attestation.finish(req.params.session, req.body),
  );

  app.post<{ Body: { csr: string } }>('/v1/agent/renew', { onRequest: trustedClientFirst, schema: { body: csrBody } }, async (req) => {
    const agent = await requireAgent(core, records, req);
    const csr = parseCsr(Buffer.from(req.body.csr, 'base64'));
    const { chain, notAfter } = core.ca.signX509Svid(csr.spki, agent.id, core.config.agentSvidTtlSeconds);
    // Conditional on the agent still holding the SVID it authenticated with: an eviction, ban or
    // other renewal that landed after requireAgent read the row must not be undone by this write.
    if (!(await core.store.renewAgentSvid(agent.id, agent.serial, new X509Certificate(chain[0] as Buffer).serialNumber, notAfter.toISOString()))) {
      throw await renewalRefusal(core, agent);
    }
    core.metrics.svids.inc({ type: 'node' });
    return { svid: chain.map((c) => c.toString('base64')), bundle: core.ca.bundle().toJwks() };
  });

  app.get<{ Querystring: { wait?: string } }>(
    '/v1/entries/authorized',
    {
      onRequest: trustedClientFirst,
      schema: { querystring: { type: 'object', additionalProperties: false, properties: { wait: { type: 'string', pattern: '^[1-9][0-9]{0,3}$' } } } },
    },
    async (req, reply) => {
      const agent = await requireAgent(core, records, req);
      let set = await sets.get(agent);
      // Long-poll: the caller already holds this set and asked to wait for the next one.
      if (req.headers['if-none-match'] === set.etag && req.query.wait !== undefined) {
        let cancel: (() => void) | undefined;
        const onClose = (): void => {
          if (!reply.raw.writableEnded) cancel?.();
        };
        const waitMs = Math.min(Number(req.query.wait), core.config.longPoll.maxWaitSeconds) * 1000;
        // Throws at once when the long-poll is refused (limits); the client going away ends the wait.
        const held = sets.waitForChange(agent, set, waitMs, () => requireAgent(core, records, req), (c) => (cancel = c));
        // Plain on/removeListener and try/finally rather than once() and held.finally(): a held
        // long-poll's objects live its whole wait and are promoted, so each one less counts (issue 15).
        reply.raw.on('close', onClose);
        let next: Awaited<typeof held>;
        try {
          next = await held;
        } finally {
          reply.raw.removeListener('close', onClose);
        }
        // Undefined: unchanged through the wait. A wait during which the datastore could not be read
        // throws store.unavailable (503) instead of a 304 (authorized-cache.ts, endUnchanged).
        if (next) set = next;
        // Unchanged: answered 304 below. Measured as the answer is handed to the socket, not at
        // its 'finish' event: that comes after every other answer written in the same turn of the
        // event loop (a deadline timer batch ends many long-polls at once), later than the client
        // receives it.
        else core.metrics.longPollLate.observe(Math.max(0, reply.elapsedTime - waitMs) / 1000);
      }
      // Read after any wait: a long-poll answered at a CA rotation carries the new bundle's ETag.
      reply.header('sigil-bundle-etag', bundleAnswer().etag);
      if (req.headers['if-none-match'] === set.etag) return reply.code(304).send();
      return reply.header('etag', set.etag).type('application/json; charset=utf-8').send(sets.body(set));
    },
  );

  app.post<{ Body: { csrs: { entryId: string; csr: string }[] } }>(
    '/v1/svid/x509',
    {
      onRequest: trustedClientFirst,
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['csrs'],
          properties: {
            csrs: {
              type: 'array',
              minItems: 1,
              maxItems: 500,
              items: { type: 'object', additionalProperties: false, required: ['entryId', 'csr'], properties: { entryId: { type: 'string', minLength: 1, maxLength: 64 }, csr: b64String } },
            },
          },
        },
      },
    },
    async (req) => {
      const agent = await requireAgent(core, records, req);
      // One batch per agent at a time (the agent sends its batches one after another): checking a
      // CSR costs up to a few ms of CPU (P-384), so parallel batches of one agent would be its way
      // to take the verifier's event loop from everyone else.
      if (x509InFlight.has(agent.id)) {
        throw new SigilError('svid.busy', `another X.509-SVID batch of ${agent.id} is being signed; send batches one at a time`, { status: 429 });
      }
      x509InFlight.add(agent.id);
      try {
        const { entries } = await sets.get(agent);
        const byId = new Map(entries.map((e) => [e.id, e]));
        const seen = new Set<string>();
        for (const c of req.body.csrs) {
          if (seen.has(c.entryId)) throw new SigilError('svid.duplicate_entry', `entry ${c.entryId} is asked for more than once in this batch`);
          seen.add(c.entryId);
        }
        // Check everything first: nothing is signed unless every request is authorized and well formed.
        const work: { entry: (typeof entries)[number]; spki: Buffer }[] = [];
        for (const [i, c] of req.body.csrs.entries()) {
          const entry = byId.get(c.entryId);
          if (!entry) throw new SigilError('svid.entry_not_authorized', `entry ${c.entryId} is not authorized for ${agent.id}`, { status: 403 });
          if (i > 0 && i % CSR_YIELD_EVERY === 0) await yieldToLoop();
          work.push({ entry, spki: parseCsr(Buffer.from(c.csr, 'base64')).spki });
        }
        const svids: { entryId: string; spiffeId: string; chain: string[]; expiresAt: string }[] = [];
        for (const [i, { entry, spki }] of work.entries()) {
          if (i > 0 && i % CSR_YIELD_EVERY === 0) await yieldToLoop();
          const ttl = entry.x509SvidTtl || core.config.svid.x509TtlSeconds;
          const { chain, notAfter } = core.ca.signX509Svid(spki, entry.spiffeId, ttl, entry.dnsNames);
          svids.push({ entryId: entry.id, spiffeId: entry.spiffeId, chain: chain.map((d) => d.toString('base64')), expiresAt: notAfter.toISOString() });
        }
        core.metrics.svids.inc({ type: 'x509' }, svids.length);
        return { svids };
      } finally {
        x509InFlight.delete(agent.id);
      }
    },
  );

  app.post<{ Body: { entryId: string; audience: string[] } }>(
    '/v1/svid/jwt',
    {
      onRequest: trustedClientFirst,
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['entryId', 'audience'],
          properties: {
            entryId: { type: 'string', minLength: 1, maxLength: 64 },
            audience: { type: 'array', minItems: 1, maxItems: 100, items: { type: 'string', minLength: 1, maxLength: 256 } },
          },
        },
      },
    },
    async (req) => {
      const agent = await requireAgent(core, records, req);
      const { entries } = await sets.get(agent);
      const entry = entries.find((e) => e.id === req.body.entryId);
      if (!entry) throw new SigilError('svid.entry_not_authorized', `entry ${req.body.entryId} is not authorized for ${agent.id}`, { status: 403 });
      const ttl = entry.jwtSvidTtl || core.config.svid.jwtTtlSeconds;
      const { token, expiresAt } = await core.ca.mintJwtSvid(entry.spiffeId, req.body.audience, ttl);
      core.metrics.svids.inc({ type: 'jwt' });
      return { token, spiffeId: entry.spiffeId, expiresAt: expiresAt.toISOString() };
    },
  );

  app.get('/v1/bundle', async (req, reply) => {
    const a = bundleAnswer();
    reply.header('etag', a.etag);
    if (req.headers['if-none-match'] === a.etag) return reply.code(304).send();
    return reply.type('application/json; charset=utf-8').send(a.body);
  });

  // SPIFFE Federation: the foreign bundles the agent's authorized entries federate with, and which
  // entry federates with which trust domain (docs/federation.md).
  app.get('/v1/bundles/federated', { onRequest: trustedClientFirst }, async (req) => {
    const agent = await requireAgent(core, records, req);
    const { entries } = await sets.get(agent);
    const byEntry: Record<string, string[]> = {};
    const wanted = new Set<string>();
    for (const e of entries) {
      if (!e.federatesWith || e.federatesWith.length === 0) continue;
      byEntry[e.id] = e.federatesWith;
      for (const td of e.federatesWith) wanted.add(td);
    }
    return { bundles: federation ? await federation.bundlesFor(wanted) : {}, entries: byEntry };
  });
}

export function registerHealthRoutes(app: FastifyInstance, core: VerifierCore): void {
  app.get('/healthz', async () => ({ status: 'ok' }));
  app.get('/readyz', async (_req, reply) => {
    const problems: string[] = [];
    try {
      await core.store.ping();
    } catch (e) {
      problems.push(`datastore: ${errorMessage(e)}`);
    }
    if (!core.ca.ready()) problems.push('no active CA');
    if (problems.length) return reply.code(503).send({ status: 'not ready', problems });
    return { status: 'ready' };
  });
  app.get('/metrics', async (_req, reply) => {
    core.metrics.bundleSequence.set(core.ca.bundle().sequence);
    reply.header('content-type', core.metrics.registry.contentType);
    return core.metrics.registry.metrics();
  });
}
