/**
 * Admin API, served over a local Unix socket (mode 0600) as SPIRE does: entries, join tokens,
 * agents, bundle, and minting SVIDs for operators. Whoever can open the socket is an admin.
 */
import type { FastifyInstance } from 'fastify';
import { SigilError } from '../errors.js';
import { parseCsr } from '../spiffe/csr.js';
import { SpiffeId } from '../spiffe/id.js';
import { parseDuration } from '../util/duration.js';
import { validateEntry, type EntryInput } from './entries.js';
import { b64String } from './http-common.js';
import { generateJoinToken } from './tokens.js';
import type { VerifierCore } from './core.js';

const ttlField = { anyOf: [{ type: 'integer', minimum: 1 }, { type: 'string', minLength: 1, maxLength: 32 }] } as const;

function ttlSeconds(v: number | string | undefined, fallback: number, key: string): number {
  if (v === undefined) return fallback;
  const s = parseDuration(v, key);
  if (s < 1) throw new SigilError('admin.invalid_ttl', `${key} must be at least 1 second`);
  return s;
}

function mintableId(core: VerifierCore, id: string): string {
  let parsed: SpiffeId;
  try {
    parsed = SpiffeId.parse(id);
  } catch (e) {
    throw new SigilError('admin.invalid_spiffe_id', `spiffeId: ${(e as Error).message}`, { cause: e });
  }
  if (!parsed.memberOf(core.config.trustDomain)) throw new SigilError('admin.wrong_trust_domain', `${id} is not in trust domain ${core.config.trustDomain}`);
  if (parsed.path.startsWith('/sigil/')) throw new SigilError('admin.reserved_path', 'SPIFFE IDs under /sigil/ are reserved for the verifier and agents');
  return parsed.toString();
}

export function registerAdminRoutes(app: FastifyInstance, core: VerifierCore): void {
  app.post<{ Body: EntryInput }>(
    '/v1/admin/entries',
    {
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['spiffeId', 'parentId', 'selectors'],
          properties: {
            spiffeId: { type: 'string', minLength: 1, maxLength: 2048 },
            parentId: { type: 'string', minLength: 1, maxLength: 2048 },
            selectors: { type: 'array', minItems: 1, maxItems: 64, items: { type: 'string', minLength: 3, maxLength: 1024 } },
            x509SvidTtl: { type: 'integer', minimum: 0 },
            jwtSvidTtl: { type: 'integer', minimum: 0 },
            dnsNames: { type: 'array', maxItems: 32, items: { type: 'string', minLength: 1, maxLength: 253 } },
            hint: { type: 'string', maxLength: 256 },
            admin: { type: 'boolean' },
            expiresAt: { anyOf: [{ type: 'string', maxLength: 64 }, { type: 'null' }] },
            federatesWith: { type: 'array', maxItems: 32, items: { type: 'string', minLength: 1, maxLength: 255 } },
          },
        },
      },
    },
    async (req, reply) => {
      const e = validateEntry(req.body, core.config.trustDomain);
      for (const td of e.federatesWith ?? []) {
        if (!(await core.store.getFederation(td))) throw new SigilError('entry.federates_with_unknown', `federatesWith names ${td}, but there is no federation relationship with it (sigil federation create)`);
      }
      const created = await core.store.createEntry(e);
      core.logger.info({ entryId: created.id, spiffeId: created.spiffeId, parentId: created.parentId }, 'entry created');
      return reply.code(201).send(created);
    },
  );

  app.get<{ Querystring: { parentId?: string; spiffeId?: string } }>(
    '/v1/admin/entries',
    {
      schema: {
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: { parentId: { type: 'string', maxLength: 2048 }, spiffeId: { type: 'string', maxLength: 2048 } },
        },
      },
    },
    async (req) => ({ entries: await core.store.listEntries(req.query) }),
  );

  app.delete<{ Params: { id: string } }>(
    '/v1/admin/entries/:id',
    { schema: { params: { type: 'object', properties: { id: { type: 'string', minLength: 1, maxLength: 64 } }, required: ['id'] } } },
    async (req) => {
      if (!(await core.store.deleteEntry(req.params.id))) throw new SigilError('entry.not_found', `no entry ${req.params.id}`, { status: 404 });
      core.logger.info({ entryId: req.params.id }, 'entry deleted');
      return { deleted: req.params.id };
    },
  );

  app.post<{ Body: { ttl?: number | string; spiffeId?: string } }>(
    '/v1/admin/tokens',
    { schema: { body: { type: 'object', additionalProperties: false, properties: { ttl: ttlField, spiffeId: { type: 'string', minLength: 1, maxLength: 2048 } } } } },
    async (req, reply) => {
      const ttl = ttlSeconds(req.body.ttl, 600, 'ttl');
      const alias = req.body.spiffeId !== undefined ? mintableId(core, req.body.spiffeId) : undefined;
      const t = await generateJoinToken(core.store, core.config.trustDomain, ttl, core.now(), alias);
      core.logger.info({ tokenId: t.tokenId, expiresAt: t.expiresAt, alias }, 'join token generated');
      return reply.code(201).send(t);
    },
  );

  app.get('/v1/admin/agents', async () => ({ agents: await core.store.listAgents() }));

  app.post<{ Body: { id: string; ban?: boolean } }>(
    '/v1/admin/agents/evict',
    { schema: { body: { type: 'object', additionalProperties: false, required: ['id'], properties: { id: { type: 'string', minLength: 1, maxLength: 2048 }, ban: { type: 'boolean' } } } } },
    async (req) => {
      const ban = req.body.ban === true;
      // The plugin state of the evicted agents' factors (e.g. the TPM counters of their EKs) goes
      // in the same transaction, so a node whose TPM was cleared can enrol again after an eviction.
      if (!(await core.store.evictAgent(req.body.id, ban, (id) => core.attestation.pluginStateOf(id)))) {
        throw new SigilError('agent.not_found', `no agent ${req.body.id} (no agent record is or names this ID, and no attestor state belongs to it)`, { status: 404 });
      }
      // The store reports the eviction to every verifier sharing it (DataStore.watchAgents), whose
      // authorized-set caches answer the evicted agents' held long-polls with the refusal.
      core.logger.info({ agentId: req.body.id, ban }, ban ? 'agent banned' : 'agent evicted');
      return { evicted: req.body.id, banned: ban };
    },
  );

  app.get<{ Querystring: { format?: 'pem' | 'spiffe' } }>(
    '/v1/admin/bundle',
    { schema: { querystring: { type: 'object', additionalProperties: false, properties: { format: { enum: ['pem', 'spiffe'] } } } } },
    async (req, reply) => {
      const b = core.ca.bundle();
      if (req.query.format === 'pem') return reply.type('application/x-pem-file').send(b.toPem());
      return b.toJwks();
    },
  );

  app.post<{ Body: { spiffeId: string; csr: string; ttl?: number | string; dnsNames?: string[] } }>(
    '/v1/admin/x509',
    {
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['spiffeId', 'csr'],
          properties: {
            spiffeId: { type: 'string', minLength: 1, maxLength: 2048 },
            csr: b64String,
            ttl: ttlField,
            dnsNames: { type: 'array', maxItems: 32, items: { type: 'string', minLength: 1, maxLength: 253 } },
          },
        },
      },
    },
    async (req) => {
      const id = mintableId(core, req.body.spiffeId);
      const csr = parseCsr(Buffer.from(req.body.csr, 'base64'));
      const { chain, notAfter } = core.ca.signX509Svid(csr.spki, id, ttlSeconds(req.body.ttl, core.config.svid.x509TtlSeconds, 'ttl'), req.body.dnsNames ?? []);
      core.metrics.svids.inc({ type: 'x509' });
      return { spiffeId: id, chain: chain.map((c) => c.toString('base64')), expiresAt: notAfter.toISOString(), bundlePem: core.ca.bundle().toPem() };
    },
  );

  app.post<{ Body: { spiffeId: string; audience: string[]; ttl?: number | string } }>(
    '/v1/admin/jwt',
    {
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['spiffeId', 'audience'],
          properties: {
            spiffeId: { type: 'string', minLength: 1, maxLength: 2048 },
            audience: { type: 'array', minItems: 1, maxItems: 100, items: { type: 'string', minLength: 1, maxLength: 256 } },
            ttl: ttlField,
          },
        },
      },
    },
    async (req) => {
      const id = mintableId(core, req.body.spiffeId);
      const { token, expiresAt } = await core.ca.mintJwtSvid(id, req.body.audience, ttlSeconds(req.body.ttl, core.config.svid.jwtTtlSeconds, 'ttl'));
      core.metrics.svids.inc({ type: 'jwt' });
      return { spiffeId: id, token, expiresAt: expiresAt.toISOString() };
    },
  );
}
