/**
 * Admin API for federation relationships (over the verifier's admin socket; `sigil federation …`):
 *   POST   /v1/admin/federations                 create
 *   GET    /v1/admin/federations                 list
 *   GET    /v1/admin/federations/:td             show (with the last good bundle)
 *   PATCH  /v1/admin/federations/:td             update
 *   DELETE /v1/admin/federations/:td             delete (cut the relationship)
 *   POST   /v1/admin/federations/:td/refresh     fetch the foreign bundle now
 */
import type { FastifyInstance } from 'fastify';
import type { FederationService } from './service.js';

const tdParam = { type: 'object', required: ['td'], properties: { td: { type: 'string', minLength: 1, maxLength: 300 } } } as const;
const fields = {
  bundleEndpointUrl: { type: 'string', minLength: 1, maxLength: 2048 },
  profile: { enum: ['https_web', 'https_spiffe'] },
  endpointSpiffeId: { anyOf: [{ type: 'string', minLength: 1, maxLength: 2048 }, { type: 'null' }] },
  webCaPem: { anyOf: [{ type: 'string', minLength: 1, maxLength: 1024 * 1024 }, { type: 'null' }] },
  initialBundle: { type: 'string', minLength: 1, maxLength: 1024 * 1024 },
} as const;

interface Body {
  trustDomain: string;
  bundleEndpointUrl: string;
  profile: string;
  endpointSpiffeId?: string;
  webCaPem?: string;
  initialBundle?: string;
}

export function registerFederationAdminRoutes(app: FastifyInstance, federation: FederationService): void {
  app.post<{ Body: Body }>(
    '/v1/admin/federations',
    {
      schema: {
        body: {
          type: 'object',
          additionalProperties: false,
          required: ['trustDomain', 'bundleEndpointUrl', 'profile'],
          properties: { trustDomain: { type: 'string', minLength: 1, maxLength: 300 }, ...fields },
        },
      },
    },
    async (req, reply) => reply.code(201).send(await federation.create(req.body)),
  );
  app.get('/v1/admin/federations', async () => ({ relationships: await federation.list() }));
  app.get<{ Params: { td: string } }>('/v1/admin/federations/:td', { schema: { params: tdParam } }, async (req) => federation.show(req.params.td));
  app.patch<{ Params: { td: string }; Body: Partial<Body> }>(
    '/v1/admin/federations/:td',
    { schema: { params: tdParam, body: { type: 'object', additionalProperties: false, minProperties: 1, properties: fields } } },
    async (req) => federation.update(req.params.td, req.body),
  );
  app.delete<{ Params: { td: string } }>('/v1/admin/federations/:td', { schema: { params: tdParam } }, async (req) => {
    await federation.delete(req.params.td);
    return { deleted: req.params.td };
  });
  app.post<{ Params: { td: string } }>('/v1/admin/federations/:td/refresh', { schema: { params: tdParam } }, async (req) => federation.refresh(req.params.td));
}
